"""Communicators: how the processes of one run talk, as ChainerMN's communicators do for Chainer.

``communicator()`` returns a :class:`SingleProcess` one on a plain run and an :class:`MPI` one when an MPI
launcher (``mpiexec``, ``srun``) started the process, which it tells from the variables the launchers set
(Open MPI's ``OMPI_COMM_WORLD_SIZE``, MPICH/Hydra's ``PMI_SIZE``, PMIx's ``PMIX_RANK``, Slurm's
``PMI_SIZE``): a plain run never imports mpi4py. All communicators share one interface: ``rank``,
``size``, ``local_rank``; ``allreduce(array)`` sums a NumPy (or, on :class:`NCCL`, CuPy) buffer across
the ranks in place; ``start_allreduce(array)`` starts that sum and returns a handle whose ``wait()``
ends it; ``bcast(array, root=0)`` copies the root's buffer into every rank's in place; ``allgather(array)``
returns every rank's buffer stacked in rank order; ``send(array, dest)`` and ``recv(array, source)`` pass a
buffer from one rank to another; ``bcast_object``, ``gather_object`` and ``barrier`` carry small Python
values; ``abort(code)`` ends every rank.

The MPI communicator hands NumPy buffers to MPI directly (``Allreduce``/``Iallreduce`` on buffers), so
arrays are never pickled. The NCCL one reduces GPU buffers through ``cupy.cuda.nccl``, its unique id
broadcast through MPI, and carries everything else over MPI.
"""
import os

import numpy

from .errors import Error

#: Environment variables by which a launcher tells its processes how many they are.
_SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS")
#: ... and which one each is, for launchers (PMIx) that set a rank but no size.
_RANK_VARIABLES = ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK")
#: ... and which one it is among those on its machine.
_LOCAL_RANK_VARIABLES = ("OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "PMIX_LOCAL_RANK",
                         "SLURM_LOCALID")


def launched_by_mpi(environ=None):
    """Whether an MPI launcher started this process (its variables are set), without importing MPI."""
    environ = os.environ if environ is None else environ
    return any(name in environ for name in _SIZE_VARIABLES + _RANK_VARIABLES)


def launcher_size(environ=None):
    """The number of processes the launcher states it started (None when it states none)."""
    environ = os.environ if environ is None else environ
    for name in _SIZE_VARIABLES[:3]:
        if name in environ:
            return int(environ[name])
    return None


def local_rank(environ=None):
    """This process's rank among those on its machine as the launcher states it (0 when unstated)."""
    environ = os.environ if environ is None else environ
    for name in _LOCAL_RANK_VARIABLES:
        if name in environ:
            return int(environ[name])
    return 0


class _Done:
    """The handle of a reduction that has already ended."""

    def wait(self):
        pass


class SingleProcess:
    """The communicator of a plain run: one rank, every collective the identity."""

    rank = 0
    size = 1
    local_rank = 0

    def allreduce(self, array):
        return array

    def start_allreduce(self, array):
        return _Done()

    def bcast(self, array, root=0):
        return array

    def allgather(self, array):
        return array[None].copy()

    def send(self, array, dest):
        raise Error(f"rank 0 of 1 has no rank {dest} to send to")

    def recv(self, array, source):
        raise Error(f"rank 0 of 1 has no rank {source} to receive from")

    def bcast_object(self, value):
        return value

    def gather_object(self, value):
        return [value]

    def barrier(self):
        pass

    def abort(self, code=1):
        raise SystemExit(code)


class MPI(SingleProcess):
    """Ranks started by an MPI launcher, reducing host buffers with MPI's buffer collectives."""

    def __init__(self, comm=None):
        from mpi4py import MPI as mpi
        self._mpi = mpi
        self.comm = mpi.COMM_WORLD if comm is None else comm
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        stated = launcher_size()
        if comm is None and stated is not None and stated != self.size:
            library = mpi.Get_library_version().splitlines()[0].strip()
            raise Error(f"the MPI launcher started {stated} processes, but mpi4py's MPI ({library}) sees "
                        f"{self.size}: start the run with the mpiexec of the MPI "
                        "mpi4py uses (the mpich wheel's lies beside the Python executable)")
        self.local_rank = self.comm.Split_type(mpi.COMM_TYPE_SHARED).Get_rank()

    @staticmethod
    def _contiguous(array):
        if not (isinstance(array, numpy.ndarray) and array.flags.c_contiguous):
            raise TypeError("MPI communicator: buffers must be C-contiguous NumPy arrays, got %s"
                            % type(array).__name__)
        return array

    def allreduce(self, array):
        self.comm.Allreduce(self._mpi.IN_PLACE, self._contiguous(array), op=self._mpi.SUM)
        return array

    def start_allreduce(self, array):
        return self.comm.Iallreduce(self._mpi.IN_PLACE, self._contiguous(array), op=self._mpi.SUM)

    def bcast(self, array, root=0):
        self.comm.Bcast(self._contiguous(array), root=root)
        return array

    def allgather(self, array):
        out = numpy.empty((self.size,) + array.shape, array.dtype)
        self.comm.Allgather(self._contiguous(array), out)
        return out

    def send(self, array, dest):
        self.comm.Send(self._contiguous(array), dest=dest)

    def recv(self, array, source):
        self.comm.Recv(self._contiguous(array), source=source)
        return array

    def bcast_object(self, value):
        return self.comm.bcast(value, root=0)

    def gather_object(self, value):
        return self.comm.gather(value, root=0)

    def barrier(self):
        self.comm.Barrier()

    def abort(self, code=1):
        self.comm.Abort(code)


class NCCL(MPI):
    """Ranks on GPUs: device buffers summed and broadcast by NCCL, small values carried over MPI.

    Each rank takes the device of its local rank; rank 0 makes NCCL's unique id and broadcasts it through
    MPI, as ChainerMN's pure_nccl communicator does.
    """

    def __init__(self, comm=None):
        super().__init__(comm)
        import cupy
        from cupy.cuda import nccl
        self._cupy, self._nccl = cupy, nccl
        cupy.cuda.Device(self.local_rank).use()
        uid = self.comm.bcast(nccl.get_unique_id() if self.rank == 0 else None, root=0)
        self.nccl = nccl.NcclCommunicator(self.size, uid, self.rank)
        self.stream = cupy.cuda.Stream(non_blocking=True)

    def _on_device(self, array):
        """Whether ``array`` goes through NCCL (a CuPy array; float32 only), else through MPI."""
        if not isinstance(array, self._cupy.ndarray):
            return False
        if not array.flags.c_contiguous or array.dtype != numpy.float32:
            layout = "" if array.flags.c_contiguous else "non-contiguous "
            raise TypeError("NCCL communicator: device buffers must be C-contiguous float32 CuPy arrays, got a "
                            f"{layout}{array.dtype} array")
        # The compute stream's writes to the buffer end before NCCL's stream reads it.
        self.stream.wait_event(self._cupy.cuda.get_current_stream().record())
        return True

    def _done(self):
        """Make the compute stream wait for what NCCL's stream has queued so far."""
        self._cupy.cuda.get_current_stream().wait_event(self.stream.record())

    def allreduce(self, array):
        if not self._on_device(array):
            return super().allreduce(array)
        self.nccl.allReduce(array.data.ptr, array.data.ptr, array.size, self._nccl.NCCL_FLOAT32,
                            self._nccl.NCCL_SUM, self.stream.ptr)
        self._done()
        return array

    def start_allreduce(self, array):
        if not self._on_device(array):
            return super().start_allreduce(array)
        self.nccl.allReduce(array.data.ptr, array.data.ptr, array.size, self._nccl.NCCL_FLOAT32,
                            self._nccl.NCCL_SUM, self.stream.ptr)
        return _Event(self.stream.record(), self._cupy)

    def bcast(self, array, root=0):
        if not self._on_device(array):
            return super().bcast(array, root)
        self.nccl.bcast(array.data.ptr, array.size, self._nccl.NCCL_FLOAT32, root, self.stream.ptr)
        self._done()
        return array

    def allgather(self, array):
        if not self._on_device(array):
            return super().allgather(array)
        out = self._cupy.empty((self.size,) + array.shape, array.dtype)
        self.nccl.allGather(array.data.ptr, out.data.ptr, array.size, self._nccl.NCCL_FLOAT32, self.stream.ptr)
        self._done()
        return out

    def send(self, array, dest):
        if not self._on_device(array):
            return super().send(array, dest)
        self.nccl.send(array.data.ptr, array.size, self._nccl.NCCL_FLOAT32, dest, self.stream.ptr)
        self.stream.synchronize()

    def recv(self, array, source):
        if not self._on_device(array):
            return super().recv(array, source)
        self.nccl.recv(array.data.ptr, array.size, self._nccl.NCCL_FLOAT32, source, self.stream.ptr)
        self._done()
        return array


class _Event:
    """The handle of an NCCL reduction: waiting makes the compute stream wait for it."""

    def __init__(self, event, cupy):
        self.event, self.cupy = event, cupy

    def wait(self):
        self.cupy.cuda.get_current_stream().wait_event(self.event)


def communicator(gpu=False):
    """The communicator of this run: MPI (NCCL with ``gpu``) under an MPI launcher, else a single process."""
    if not launched_by_mpi():
        return SingleProcess()
    return NCCL() if gpu else MPI()


def mpiexec():
    """The ``mpiexec`` of the MPI library mpi4py is built on: the mpich wheel's beside this Python, else
    the one on PATH (a system MPI, for an mpi4py built against it)."""
    import shutil
    import sys
    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    from mpi4py import MPI as mpi
    if "MPICH" in mpi.Get_library_version() and os.access(beside, os.X_OK):
        return beside
    return shutil.which("mpiexec")
