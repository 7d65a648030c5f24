"""The communicators: launcher detection without MPI, and real ``mpiexec -n 2`` collectives on NumPy buffers."""
import os
import subprocess
import sys
import time

import numpy
import pytest

from fastrcnn import comm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Run by each rank: sums, a started sum, a broadcast and a gather, written to a file per rank.
RANK_SCRIPT = r"""
import sys, numpy
from fastrcnn import comm
c = comm.communicator()
assert isinstance(c, comm.MPI), type(c)
rng = numpy.random.default_rng(c.rank)
a = rng.standard_normal(1000).astype(numpy.float32)
b = rng.standard_normal(37).astype(numpy.float32)
own = numpy.concatenate([a, b])
c.allreduce(a)
handle = c.start_allreduce(b)
handle.wait()
w = numpy.full(5, c.rank, numpy.float64)
c.bcast(w)
gathered = c.gather_object(("rank", c.rank))
last = numpy.full(3, c.rank, numpy.float32)
c.bcast(last, root=1)
stacked = c.allgather(numpy.arange(4, dtype=numpy.float64) + 10 * c.rank)
passed = numpy.zeros(6, numpy.float32)
if c.rank == 0:
    c.send(own[:6], 1)
else:
    c.recv(passed, 0)
numpy.savez(sys.argv[1] + "/%d.npz" % c.rank, own=own, summed=numpy.concatenate([a, b]), w=w,
            size=c.size, gathered=numpy.array(gathered if c.rank == 0 else [], dtype=object).astype(str),
            last=last, stacked=stacked, passed=passed)
"""


def _run(tmp_path, script, n=2, timeout=60):
    path = tmp_path / "rank.py"
    path.write_text(script)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([comm.mpiexec(), "-n", str(n), sys.executable, str(path), str(tmp_path)],
                          capture_output=True, text=True, timeout=timeout, env=env)


def test_detection_reads_launcher_variables_only():
    assert not comm.launched_by_mpi({})
    assert comm.launched_by_mpi({"OMPI_COMM_WORLD_SIZE": "2"})
    assert comm.launched_by_mpi({"PMI_SIZE": "4"})
    assert comm.launched_by_mpi({"PMIX_RANK": "0"})
    assert comm.local_rank({"MPI_LOCALRANKID": "3"}) == 3
    assert comm.local_rank({}) == 0


def test_plain_run_is_single_process_and_imports_no_mpi():
    env = {k: v for k, v in os.environ.items() if not comm.launched_by_mpi({k: v})}
    env["PYTHONPATH"] = ROOT
    code = ("import sys; from fastrcnn import comm; c = comm.communicator(); "
            "a = __import__('numpy').ones(3); assert c.allreduce(a) is a and c.size == 1 and c.rank == 0; "
            "c.start_allreduce(a).wait(); assert c.gather_object(7) == [7]; "
            "assert (c.allgather(a) == a[None]).all() and c.bcast(a, root=0) is a; "
            "assert 'mpi4py' not in sys.modules and 'cupy' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_launcher_of_another_mpi_is_named_not_run_as_n_single_processes():
    env = {k: v for k, v in os.environ.items() if not comm.launched_by_mpi({k: v})}
    env.update(PYTHONPATH=ROOT, OMPI_COMM_WORLD_SIZE="2", OMPI_COMM_WORLD_RANK="0")
    result = subprocess.run([sys.executable, "-c", "from fastrcnn import comm; comm.communicator()"],
                            capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode != 0
    assert "started 2 processes" in result.stderr and "sees 1" in result.stderr


def test_two_ranks_sum_broadcast_and_gather_numpy_buffers(tmp_path):
    result = _run(tmp_path, RANK_SCRIPT)
    assert result.returncode == 0, result.stderr
    r0, r1 = (numpy.load(tmp_path / ("%d.npz" % r), allow_pickle=False) for r in (0, 1))
    expected = r0["own"] + r1["own"]  # two addends: the sum is the same in either order
    numpy.testing.assert_array_equal(r0["summed"], expected)
    numpy.testing.assert_array_equal(r1["summed"], expected)
    numpy.testing.assert_array_equal(r1["w"], numpy.zeros(5))
    assert int(r0["size"]) == 2
    assert r0["gathered"].tolist() == [["rank", "0"], ["rank", "1"]]
    numpy.testing.assert_array_equal(r0["last"], numpy.ones(3))  # rank 1's, broadcast from root 1
    for r in (r0, r1):
        numpy.testing.assert_array_equal(r["stacked"], [[0, 1, 2, 3], [10, 11, 12, 13]])  # rank order
    numpy.testing.assert_array_equal(r1["passed"], r0["own"][:6])


def test_abort_on_one_rank_ends_every_rank_quickly(tmp_path):
    script = ("import time; from fastrcnn import comm\nc = comm.communicator()\n"
              "if c.rank == 1:\n    c.abort(3)\nc.barrier()\ntime.sleep(60)\n")
    start = time.monotonic()
    result = _run(tmp_path, script, timeout=30)
    assert result.returncode != 0
    assert time.monotonic() - start < 30


def test_wrong_buffer_is_named():
    with pytest.raises(TypeError, match="C-contiguous NumPy"):
        comm.MPI._contiguous(numpy.ones((4, 4))[:, 1])
