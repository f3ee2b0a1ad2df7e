"""``kemu find``: the grammar draws only programs the parser takes, a seeded campaign
finds the S5 hazard under legacy and shrinks it to a reproducer that fails on its own,
the same seed gives the same reproducer, Dask workers give what the local run gives,
and the corpus and output directories stay bounded."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kemu.agents.launcher import designs, explore
from kemu.agents.launcher.find import engine, grammar
from kemu.agents.launcher.runner import run_scenario
from kemu.agents.scenario.calls import check_calls
from kemu.agents.scenario.parse import load, parse

ROOT = Path(__file__).resolve().parent.parent
FOUND = ROOT / "scenarios" / "found"
#: a campaign seed and size that find the S5 hazard under legacy (measured: docs/find.md)
S5_SEED = 1
S5_PROGRAMS = 16
#: the chunk of that seed where it first is (the campaign draws from there; a chunk
#: less than ``engine.LAG`` from the start mutates nothing, so chunk 15 drawn first is
#: what an unguided campaign of seed 1 draws there): of seed 1's chunks, unguided, 13
#: is the first that has it (with the producers' own genes, ``grammar.sub_gene``)
S5_CHUNK = 13


@pytest.mark.timeout(120)
@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(grammar.programs())
def test_the_grammar_draws_only_programs_the_parser_takes(prog: grammar.Program) -> None:
    sc = parse(prog.text, "drawn.scn")
    check_calls(sc)
    assert len(prog) >= 1
    engine.check_text(prog.text, "drawn.scn")  # what a campaign checks, too


def test_decoding_is_a_function_of_the_genes() -> None:
    genes = [(0, 0, 0, 0, 0, 0), (7, 3, 1, 4, 1, 5), (2, 9, 9, 9, 9, 9)]
    assert grammar.decode(genes) == grammar.decode(list(genes))
    # a descriptor is only ever used by the actor that has it
    text = grammar.decode([(0, 0, 0, 0, 0, 0)] * 10).text
    parse(text, "same.scn")


DRAW = """
import hashlib, sys
sys.path.insert(0, sys.argv[1])
if sys.argv[2] == "more":
    import lots_of_literals  # a local module: Hypothesis would draw its literals
from kemu.agents.launcher.find import engine
print(hashlib.sha256("".join(engine.draw_texts(1, 15)).encode()).hexdigest())
"""


@pytest.mark.timeout(120)
def test_a_seed_draws_the_same_programs_whatever_is_imported(tmp_path: Path) -> None:
    """Hypothesis mixes the literals of the process's local modules into its draws; a
    campaign must not depend on them (a Dask worker, a test run after others, imports
    other modules).  Before the fix the two draws differed."""
    (tmp_path / "lots_of_literals.py").write_text(
        "VALUES = [" + ", ".join(str(n) for n in range(3, 3000, 7)) + "]\n")
    digests = [subprocess.run([sys.executable, "-c", DRAW, str(tmp_path), which],
                              capture_output=True, text=True, timeout=100, check=True,
                              cwd=ROOT).stdout for which in ("plain", "more")]
    assert digests[0] == digests[1] and digests[0]


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.randoms(use_true_random=False), st.lists(grammar.genes(), min_size=1, max_size=6),
       st.lists(st.integers(0, grammar.MASK_MAX), min_size=6, max_size=6))
def test_mutants_are_programs_the_parser_takes(rng: random.Random,
                                               parents: list[list[grammar.Gene]],
                                               masks: list[int]) -> None:
    """Whatever a mutation does to the genes (insert, copy, splice, redraw, delete) and
    the mask, the decoder makes a program the parser takes, of at most MAX_STEPS genes."""
    corpus = list(zip(masks, parents, strict=False))
    mask, genes = grammar.mutate(rng, corpus, weights=[1.0] * len(corpus))
    assert 1 <= len(genes) <= grammar.MAX_STEPS
    prog = grammar.decode(genes, mask)
    engine.check_text(prog.text, "mutant.scn")
    assert prog.genes == tuple(genes) and prog.mask == mask


@pytest.mark.parametrize("dead", [(), ("A",), ("A", "B")])
def test_any_actor_alive_can_have_the_next_line(dead: tuple[str, ...]) -> None:
    """A line that does not go on from the actor of the line before may go to any actor
    alive, however many there are (with two alive, the second was never chosen)."""
    chosen: set[str] = set()
    for g0 in range(0, 64, 4):  # g0 % 4 == 0: not the actor of the line before
        d = grammar._Decoder()
        for name in dead:
            d.actors[name].alive = False
        d.lines = ["B: getpid()"]
        d.step((g0, 0, 0, 0, 0, 0))
        chosen.add(d.lines[-1].split(":")[0])
    assert chosen == {a for a in grammar.TOP if a not in dead}


def test_a_directed_insertion_uses_what_the_program_made() -> None:
    """A directed gene makes an actor alive at the insertion point use what the program
    made for it (A: its descriptor, mapping, context, region; B and R, who hold nothing:
    the path A opened), every actor alive and every such call among the choices, a
    weight-1 call as well as a weight-2 one; no producer is drawn for it."""
    prefix = grammar.decode([(0, 0, 0, 0, 0, 0)] * 3)  # A: open, mmap, ibv_reg_mr, write
    rng = random.Random(7)
    calls: dict[str, set[str]] = {n: set() for n in grammar.TOP}
    for _ in range(2000):
        g = grammar.directed(rng, prefix.genes, 0, len(prefix.genes))
        assert g is not None and len(g) == grammar.GENE_LEN
        assert all(0 <= x <= grammar.GENE_MAX for x in g)
        d = grammar._Decoder()
        for x in prefix.genes:
            d.step(x)
        a = d.actors["A"]
        mine = [r.var for r in (*a.fds, *a.maps, *a.mrs, *a.keys)]
        n0 = len(d.lines)
        d.step(g)
        # nothing had to be made first (mmap sizes the file to the mapping first)
        assert len(d.lines) == n0 + 1 or (len(d.lines) == n0 + 2
                                          and ": ftruncate(" in d.lines[n0]), d.lines[n0:]
        if d.lines[-1] == "!kill A":
            calls["A"].add("!kill")
            continue
        actor, text = d.lines[-1].split(": ", 1)
        call = text.split(" = ")[-1].split("(")[0]
        calls[actor].add(call)
        if actor == "A" and call not in ("truncate", "unlink", "fork", "exec", "exit") \
                and "MAP_ANONYMOUS" not in text:  # mmap's gene may draw an anonymous one
            assert any(re.search(rf"\b{v}\b", text.split("(", 1)[1]) for v in mine), text
    # B and R hold nothing: only the path A opened is theirs to use, not their own fate
    assert calls["B"] == calls["R"] == {"truncate", "unlink"}
    # A's fate is a use of what it holds: its pins outlive it, or go with it
    assert {"pread", "pwrite", "fcntl", "munmap", "ibv_dereg_mr", "rdma_write",
            "ibv_reg_mr", "close", "fork", "exec", "exit", "!kill"} <= calls["A"], calls["A"]
    assert "open" not in calls["A"] and "ibv_open_device" not in calls["A"]


def test_mutation_keeps_inserted_genes_of_a_full_program() -> None:
    """Inserting into a program of MAX_STEPS genes drops genes elsewhere, not the new
    ones (they were cut off the end before)."""
    full = [(0, i, 0, 0, 0, 0) for i in range(grammar.MAX_STEPS)]
    kept = 0
    for s in range(200):
        _, genes = grammar.mutate(random.Random(s), [(0, full)])
        assert len(genes) <= grammar.MAX_STEPS
        kept += any(g not in full for g in genes)
    assert kept > 100


def test_a_swarm_mask_leaves_calls_out() -> None:
    """A mask bit leaves its kind of call out of what the actors draw (swarm testing),
    except as the producer of what another call needs."""
    genes = [(0, i * 37, i, i, i, i) for i in range(40)]
    every = grammar.decode(genes).text
    no_mmap = grammar.decode(genes, 1 << grammar.SWARM.index("mmap")).text
    assert every != no_mmap
    only_writes = grammar.MASK_MAX ^ (1 << grammar.SWARM.index("rdma_write"))
    text = grammar.decode(genes, only_writes).text
    assert "rdma_write(" in text and ": truncate(" not in text and ": fcntl(" not in text
    assert "ibv_reg_mr(" in text  # the producer of the region's keys, though left out


def test_a_parents_weight_decays_with_its_mutants() -> None:
    """A corpus program's weight is one over the count of its rarest feature, squared,
    halved for every DECAY mutants it has had: a program that has just reached a rare
    state gets more of the next mutants than one mutated for long without result."""
    camp = engine.Campaign(0, ["legacy"])
    camp.guide = [(0, ((1, 2, 3, 4, 5, 6),)), (0, ((6, 5, 4, 3, 2, 1),)),
                  (0, ((7, 7, 7, 7, 7, 7),))]
    camp.guide_feats = [frozenset({"a", "b"}), frozenset({"a", "c"}), frozenset({"a"})]
    camp.counts.update({"a": 4, "b": 2, "c": 2})
    assert [w for _, _, w in camp.parents()] == [0.25, 0.25, 1 / 16]
    camp.chosen.update([0] * engine.DECAY)
    assert [w for _, _, w in camp.parents()] == [0.125, 0.25, 1 / 16]
    # the mutants a chunk drew are counted against the parents it was given
    corpus = [(m, g) for m, g, _ in camp.parents()]
    chosen: list[int] = []
    for s in range(50):
        grammar.mutate(random.Random(s), corpus, weights=[0.0, 1.0, 0.0], chosen=chosen)
    assert chosen == [1] * 50


def test_corpus_files_keep_their_genes(tmp_path: Path) -> None:
    genes = ((1, 2, 3, 4, 5, 6), (7, 8, 9, 10, 11, 12))
    text = engine.corpus_text(5, genes)
    assert engine.corpus_genes(text) == (5, genes)
    parse(text, "corpus.scn")  # the genes line is a comment
    assert engine.corpus_genes("A: getpid()\n") == (0, ())
    assert engine.corpus_genes("# genes: [1, [[1, 2]]]\nA: getpid()\n") == (0, ())


@pytest.mark.timeout(120)
def test_a_block_freed_under_a_pin_is_a_feature() -> None:
    """The kernel says when it frees a block a device still pins (``block-free
    pinned=longterm``): the coverage a guided campaign grows, and the moment a hazard
    became possible.  Under map-direct-sealed the seal goes with the mapping while the
    region still pins the block."""
    text = "\n".join([
        *grammar.HEADER,
        'A: fd = open("/f", O_RDWR|O_CREAT, 0o644)', "A: ftruncate(fd, 4096)",
        "A: p = mmap(4096, PROT_READ|PROT_WRITE, MAP_SHARED_VALIDATE|MAP_DIRECT, fd, 0)",
        "A: ctx = ibv_open_device()",
        "A: mr = ibv_reg_mr(ctx, p, 4096, IBV_ACCESS_LOCAL_WRITE|IBV_ACCESS_REMOTE_WRITE)",
        "A: munmap(p, 4096)", 'A: truncate("/f", 0)']) + "\n"
    feats: set[str] = set()
    engine.run_program(text, "map-direct-sealed", "pinned", feats=feats)
    want = "map-direct-sealed block-free pinned=longterm owner=live peer=False"
    assert want in feats, sorted(feats)
    feats = set()
    engine.run_program(text, "upstream", "pinned", feats=feats)  # no MAP_DIRECT, no pin
    assert not any("pinned=" in f for f in feats)
    assert "upstream mmap errno EOPNOTSUPP" in feats


def test_a_queue_pairs_number_is_not_a_feature() -> None:
    """Which queue pair carried a transfer is not the kernel's decision: ``via=qp 3``
    and ``via=qp 1`` are one feature (they were a new one per queue pair)."""
    ev = {"ev": "rdma-write", "status": "IBV_WC_SUCCESS", "via": "qp 3", "pin": "anon",
          "owner": "live", "mr": 2}
    assert engine._token(ev) == engine._token({**ev, "via": "qp 1"}) == \
        "rdma-write status=IBV_WC_SUCCESS via=qp pin=anon owner=live"


@pytest.mark.timeout(120)
def test_what_became_of_the_registering_process_is_a_feature() -> None:
    """A region outlives the process that registered it when another process holds
    its context: the kernel says so where it matters (``owner=``, the fate of
    ``ib_umem->owning_mm``), at the death (``mm-held``), in a mapping torn down under
    a pin, a block freed under it and a device access through it.  These are states a
    guided campaign keeps programs for; under upstream none of them is reached.  What
    the teardown after the lines does is left out (its order is the scheduler's)."""
    text = "\n".join([
        *grammar.HEADER,
        'A: fd = open("/f", O_RDWR|O_CREAT, 0o644)', "A: ftruncate(fd, 4096)",
        "A: p = mmap(4096, PROT_READ|PROT_WRITE, MAP_SHARED_VALIDATE|MAP_DIRECT, fd, 0)",
        "A: ctx = ibv_open_device()",
        "A: mr = ibv_reg_mr(ctx, p, 4096, IBV_ACCESS_LOCAL_WRITE|IBV_ACCESS_REMOTE_WRITE)",
        "A: send(R, mr)", "R: m = recv()", "A: sendfd(B, ctx)", "B: c = recvfd()",
        'R: rdma_write(m.rkey, 0, "XXXX")', "A: exit(0)",
        'R: rdma_write(m.rkey, 0, "XXXX")', 'B: truncate("/f", 0)',
        'R: rdma_write(m.rkey, 0, "XXXX")']) + "\n"
    feats: set[str] = set()
    _, violations, _ = engine.run_program(text, "map-direct-sealed", "passed", feats=feats)
    for want in ("munmap why=exit pinned=longterm",
                 "block-free pinned=longterm owner=exit peer=True",
                 "reg_mr pin=fsdax remote=True", "pass pin=fsdax", "receive pin=fsdax",
                 # A's exit: its pinned address space is kept, a peer can reach it
                 "mm-held pin=fsdax remote=True",
                 "exit why=died",
                 "rdma-write status=IBV_WC_SUCCESS via=call pin=fsdax owner=live",
                 "rdma-write status=IBV_WC_SUCCESS via=call pin=fsdax owner=exit"):
        assert f"map-direct-sealed {want}" in feats, (want, sorted(feats))
    # nothing of the teardown (the deaths the launcher tells, its reaping) is a feature;
    # what the audit says of the region that lives on when the lines are over is: A's,
    # its context held by B, its key reached by R
    assert not any("at=end" in f or "reap" in f for f in feats), sorted(feats)
    assert [f for f in feats if "mr-state" in f] == [
        "map-direct-sealed mr-state pin=fsdax owner=exit shared=True peer=True remote=True"]
    assert any(engine.kind_of(v) == "longterm" for v in violations), violations
    feats = set()
    engine.run_program(text, "upstream", "passed", feats=feats)
    assert not any("owner=" in f or "mm-held" in f for f in feats), sorted(feats)
    # the registrar's death without a context held elsewhere keeps nothing pinned
    alone = "\n".join(ln for ln in text.splitlines() if "sendfd" not in ln
                      and "recvfd" not in ln) + "\n"
    feats = set()
    engine.run_program(alone, "map-direct-sealed", "alone", feats=feats)
    assert not any("mm-held" in f or "owner=exit" in f for f in feats), sorted(feats)


@pytest.mark.timeout(300)
def test_a_guided_campaign_draws_the_same_programs_with_any_number_of_jobs() -> None:
    """Chunks past ``engine.LAG`` mutate the corpus the earlier chunks grew; it grows in
    chunk order, so one job and three draw the same programs."""
    def run(jobs: int) -> engine.Campaign:
        return engine.campaign(["legacy"], seed=4, programs=24, chunk_size=2, jobs=jobs,
                               minimize=False, progress=None, max_steps=8)
    one, three = run(1), run(3)
    assert one.mutants > 0 and one.mutants == three.mutants
    assert one.guide and one.guide == three.guide
    assert one.covered == three.covered


def test_a_generator_bug_is_reported_as_such() -> None:
    with pytest.raises(engine.GeneratorBug, match="the parser refuses"):
        engine.check_text("A: fd = open(\n", "bad.scn")


def test_budgets_and_bad_input() -> None:
    assert engine.parse_budget("10m") == 600 and engine.parse_budget("90") == 90
    assert engine.parse_budget("1.5h") == 5400
    with pytest.raises(ValueError, match="a budget is"):
        engine.parse_budget("soon")
    out = subprocess.run([sys.executable, "launch.py", "find", "--budget", "soon"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 2 and "a budget is" in out.stderr
    out = subprocess.run([sys.executable, "launch.py", "find", "--designs", "no-such"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 2 and "no-such" in out.stderr


def test_corpus_and_out_directories_stay_bounded(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    texts = [grammar.decode([(i, 1, 2, 3, 4, 5)]).text + f"# {i}\n" for i in range(30)]
    engine.save_corpus(str(corpus), texts, limit=10)
    assert len(list(corpus.glob("*.scn"))) == 10
    engine.save_corpus(str(corpus), texts[:5], limit=10)  # the same programs: no copies
    assert len(list(corpus.glob("*.scn"))) == 10
    assert len(engine.load_corpus(str(corpus))) == 10
    out = tmp_path / "out"
    out.mkdir()
    for i in range(5):
        (out / f"r{i}.scn").write_text("A: getpid()\n")
        (out / f"r{i}.run").mkdir()
    engine.bound(str(out), ".scn", 2)
    assert sorted(p.name for p in out.iterdir()) == ["r3.run", "r3.scn", "r4.run", "r4.scn"]


@pytest.mark.timeout(120)
def test_a_corpus_runs_first_in_chunks_side_by_side(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The programs of a corpus directory run before anything is drawn, in chunks of
    CHUNK programs side by side (as one task they held up the guided chunks), each
    once, and all join the campaign's corpus in their order."""
    corpus = tmp_path / "corpus"
    genes = [((i * 4, 7 * i, i, i, 0, 0), (0, 3, 0, 0, 0, 0)) for i in range(20)]
    engine.save_corpus(str(corpus), [engine.corpus_text(0, g) for g in genes])
    texts = engine.load_corpus(str(corpus))
    sizes: list[int] = []
    run_texts = engine.run_texts

    def recording(texts: list[str], *args: Any) -> engine.Chunk:
        sizes.append(len(texts))
        return run_texts(texts, *args)

    monkeypatch.setattr(engine, "run_texts", recording)
    camp = engine.campaign(["legacy"], seed=0, programs=1, jobs=3, corpus=str(corpus),
                           progress=None, minimize=False, chunk_size=8)
    assert sorted(sizes) == [4, 8, 8]  # three tasks, not one of 20
    assert camp.programs == 21  # 20 from the corpus, 1 drawn
    kept = [engine.corpus_text(m, g) for m, g in camp.guide]
    assert [t for t in kept if t in texts] == [t for t in texts if t in kept]
    assert kept and kept[0] in texts


def test_merging_an_actor_takes_out_what_it_was_passed() -> None:
    """Merging R into A makes R's lines A's and takes out what A would pass itself: the
    send, its receipt, and the received name is the sent one from there on.  An actor
    killed or forking is not merged, a fork child only into its parent."""
    text = "\n".join([
        'A: fd1 = open("/f", O_RDWR|O_CREAT, 0o644)', "A: sendfd(R, fd1)",
        "B: ctx2 = ibv_open_device()", "B: sendfd(R, ctx2)", "R: fd3 = recvfd()",
        "R: ftruncate(fd3, 4096)", "R: ctx4 = recvfd()", 'R: pwrite(fd3, "R" * 4, 0)'])
    merged = engine.merge_actor(text + "\n", "A", "R")
    assert merged == "\n".join([
        'A: fd1 = open("/f", O_RDWR|O_CREAT, 0o644)',
        "B: ctx2 = ibv_open_device()", "B: sendfd(A, ctx2)",
        "A: ftruncate(fd1, 4096)", "A: ctx4 = recvfd()", 'A: pwrite(fd1, "R" * 4, 0)']) + "\n"
    parse(merged, "merged.scn")
    assert engine.merge_actor(text + "\n!kill R\n", "A", "R") is None
    assert engine.merge_actor(text + "\nR: fork() as D\n", "A", "R") is None
    assert engine.merge_actor(text, "A", "C") is None


#: what seed 2 of ``bench_find_hazards.py --design legacy`` found, after the gene cutting
#: and explore's line cutting: 13 calls, a fork child only there to open /f once more
FORKED_S5 = """set step_timeout = 1.0
set lease_break_time = 0.3
set dio_time = 0.3
set blocks = 64
A: fd3 = open("/f", O_RDWR|O_CREAT|O_TRUNC, 0o644)
A: ftruncate(fd3, 8192)
A: fd6 = open("/f", O_RDWR, 0o644)
A: p7 = mmap(4096, PROT_READ|PROT_WRITE, MAP_SHARED, fd6, 0)
A: ctx8 = ibv_open_device()
A: mr9 = ibv_reg_mr(ctx8, p7, 4096, IBV_ACCESS_LOCAL_WRITE|IBV_ACCESS_REMOTE_WRITE)
A: fork() as D
D: fd10 = open("/f", O_RDWR|O_CREAT, 0o644)
D: sendfd(A, fd10)
A: fd11 = recvfd()
A: fd12 = open("/g", O_RDONLY|O_CREAT, 0o644)
A: clone(fd12, fd11)
D: rdma_write(mr9.rkey, 0, "XXXX")
"""


@pytest.mark.timeout(120)
def test_a_fork_child_merges_into_its_parent_and_a_file_is_opened_once() -> None:
    """A fork child merges into its parent (its fork line goes), into no other actor;
    then a second descriptor of the same file in one actor gives way to the first while
    the program still breaks: the 13 calls of what seed 2 found become 8, and still
    write into a freed block under legacy."""
    assert engine.merge_actor(FORKED_S5, "B", "D") is None  # D is A's child
    f = engine.Found("no-foreign-write", "legacy", "legacy", "", False, FORKED_S5, 0, 0,
                     "longterm")
    text = engine.unify_fds(engine.merge_actors(FORKED_S5, f), f)
    calls = [ln for ln in text.splitlines() if ": " in ln and not ln.startswith("set ")]
    assert calls == [
        'A: fd3 = open("/f", O_RDWR|O_CREAT|O_TRUNC, 0o644)', "A: ftruncate(fd3, 8192)",
        "A: p7 = mmap(4096, PROT_READ|PROT_WRITE, MAP_SHARED, fd3, 0)",
        "A: ctx8 = ibv_open_device()",
        "A: mr9 = ibv_reg_mr(ctx8, p7, 4096, IBV_ACCESS_LOCAL_WRITE|IBV_ACCESS_REMOTE_WRITE)",
        'A: fd12 = open("/g", O_RDONLY|O_CREAT, 0o644)', "A: clone(fd12, fd3)",
        'A: rdma_write(mr9.rkey, 0, "XXXX")'], text
    _, violations, _ = engine.run_program(text, "legacy", "unified")
    assert engine.breaks(violations, f)


@pytest.mark.timeout(120)
def test_a_dup_gives_way_to_the_descriptor_it_copies() -> None:
    """What seed 2 found under map-direct-sealed (F7) came with ``fd2 = dup(fd1)``, the
    mapping made through the copy: the copy goes, and the program still breaks."""
    text = (FOUND / "F7_mapper_exits_after_registering_through_a_passed_context.scn"
            ).read_text()
    body = [re.sub(r"\s+=>.*", "", ln) for ln in text.splitlines()
            if not ln.startswith(("#", "Z:"))]
    at = body.index('B: fd1 = open("/f", O_RDWR|O_CREAT, 0o644)') + 1
    assert body[at:at + 2] == [
        "B: ftruncate(fd1, 8192)",
        "B: p4 = mmap(8192, PROT_READ|PROT_WRITE, MAP_SHARED_VALIDATE|MAP_DIRECT, fd1, 0)"]
    duped = "\n".join([*body[:at], "B: fd2 = dup(fd1)", "B: ftruncate(fd2, 8192)",
                       "B: p4 = mmap(8192, PROT_READ|PROT_WRITE, "
                       "MAP_SHARED_VALIDATE|MAP_DIRECT, fd2, 0)", *body[at + 2:]]) + "\n"
    f = engine.Found("no-foreign-write", "map-direct-sealed", "map-direct-sealed", "",
                     False, duped, 0, 0, "longterm")
    _, violations, _ = engine.run_program(duped, f.spec, "duped")
    assert engine.breaks(violations, f), duped
    assert "dup(" in duped
    assert engine.unify_fds(duped, f) == "\n".join(body) + "\n"


def test_a_message_and_its_receipt_are_cut_together() -> None:
    """explore's line cutting removes a message with the receipt that takes it: either
    alone would hand the receiver another message."""
    lines = ["A: send(R, mr1)", "B: sendfd(R, fd2)", "R: m3 = recv()", "R: fd4 = recvfd()",
             "R: m5 = recv()", "A: x &", "A: join"]
    assert explore._units(lines) == [[0, 2], [1, 3], [4], [5, 6]]


def _s5(tmp_path: Path, name: str) -> engine.Campaign:
    return engine.campaign(["legacy"], seed=S5_SEED, programs=S5_PROGRAMS, start=S5_CHUNK,
                           out_dir=str(tmp_path / name), progress=None, shrink_runs=30)


@pytest.mark.timeout(400)
def test_a_seeded_campaign_finds_the_s5_hazard_under_legacy(tmp_path: Path) -> None:
    """Under legacy an RDMA (or direct-I/O) write lands in another file's block: found
    unaided, shrunk to at most 10 lines, written as a reproducer that fails under
    ``run``, with its run folder; the same seed finds the same reproducer."""
    with ThreadPoolExecutor(max_workers=2) as pool:  # the same seed twice, at once
        camp, again = pool.map(lambda name: _s5(tmp_path, name), ["one", "two"])
    key = ("no-foreign-write:longterm", "legacy")
    assert key in camp.first, camp.first
    assert not camp.first[key].promised  # legacy promises nothing: its hazard
    rep = camp.reproducers[key]
    sc = load(rep.path)
    calls = [s for s in sc.steps if s.kind in ("call", "join")]
    assert len(calls) <= 10, Path(rep.path).read_text()
    assert sc.title.startswith("no-foreign-write broken under legacy")
    assert os.path.isfile(os.path.join(rep.run_dir, "sequence.svg"))
    assert os.path.isfile(os.path.join(rep.run_dir, "blockmap.svg"))
    assert rep.fails
    out = subprocess.run([sys.executable, "launch.py", "run", rep.path], cwd=ROOT,
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 1 and "foreign_writes()" in out.stdout, out.stdout
    assert Path(again.reproducers[key].path).read_text() == Path(rep.path).read_text()


def _dask_available() -> bool:
    try:
        import distributed  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.timeout(300)
@pytest.mark.skipif(not _dask_available(),
                    reason="Dask distributed is not installed (pip install 'kemu[distributed]')")
def test_dask_workers_find_what_the_local_run_finds() -> None:
    """A local Dask cluster of three worker processes, bound to 127.0.0.1, started by the
    test: the same seed draws the same programs there and finds the same violations.
    The cluster's client lives in a process of its own: Dask leaves threads behind
    (its event loop), and a process-directed signal a later test sends itself could go
    to one of them."""
    spec = str(ROOT / "tests" / "designs" / "false_promise.py")
    # chunks S5_CHUNK - 1 and S5_CHUNK of seed 1: the second holds the S5 hazard
    local = engine.campaign(["legacy", spec], seed=S5_SEED, programs=32, start=S5_CHUNK - 1,
                            minimize=False, progress=None)
    done = subprocess.run([sys.executable, "-c", ON_DASK, spec, str(S5_SEED),
                           str(S5_CHUNK - 1)], capture_output=True,
                          text=True, timeout=280, check=False, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    remote = json.loads(done.stdout.strip().splitlines()[-1])
    assert remote["programs"] == local.programs == 32
    assert remote["first"] == {" ".join(k): f.text for k, f in local.first.items()}
    assert f"no-foreign-write:longterm {designs.resolve(spec)}" in remote["first"], remote


ON_DASK = """
import json, sys
from distributed import LocalCluster
from kemu.agents.launcher.find import engine

with LocalCluster(n_workers=3, threads_per_worker=2, processes=True, host="127.0.0.1",
                  dashboard_address=None) as cluster:
    camp = engine.campaign(["legacy", sys.argv[1]], seed=int(sys.argv[2]), programs=32,
                           start=int(sys.argv[3]), minimize=False, progress=None,
                           scheduler=cluster.scheduler_address)
print(json.dumps({"programs": camp.programs,
                  "first": {" ".join(k): f.text for k, f in camp.first.items()}}))
"""


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", sorted(p.name for p in FOUND.glob("*.scn")))
def test_found_scenarios_hold_under_every_design(name: str) -> None:
    """The reproducers ``find`` found, committed with their expectations: each meets
    them under every built-in design."""
    sc = load(FOUND / name)
    bad = {}
    for design in designs.builtin():
        outcome = run_scenario(sc, "emulator", design, show_pids=False, render=False)
        if not outcome.passed:
            bad[design] = outcome.failures
    assert not bad, bad
