"""Helpers of the tests that start real ``mpiexec`` runs."""
import ast
import os
import signal


def break_quantization_tables(path):
    """Point every component of a baseline JPEG at quantization table 3, which it lacks: the header (and so
    the dataset's check) still reads, decoding fails."""
    data = bytearray(path.read_bytes())
    sof = data.index(b"\xff\xc0")
    for c in range(data[sof + 9]):
        data[sof + 12 + 3 * c] = 3
    path.write_bytes(bytes(data))


def fault_layer(bottom, rank, at, action):
    """The prototxt of an in-place :class:`Fault` layer on ``bottom``."""
    param = repr({"rank": rank, "at": at, "action": action}).replace('"', "'")
    return (f'layer {{ name: "fault" type: "Python" bottom: "{bottom}" top: "{bottom}" '
            f'python_param {{ module: "mpi_helpers" layer: "Fault" param_str: "{param}" }} }}')


class Fault:
    """An in-place pass-through Python layer that, on MPI rank ``rank`` at its forward pass number ``at``
    (the iteration, with one pass an iteration), makes its blob NaN (``action`` "nan") or kills its own process
    with SIGKILL ("kill"). The rank is the MPICH launcher's PMI_RANK."""

    def setup(self, bottom, top):
        param = ast.literal_eval(self.param_str)
        self.rank, self.at, self.action = param["rank"], param["at"], param["action"]
        self.passes = 0

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        self.passes += 1
        if self.passes != self.at or int(os.environ.get("PMI_RANK", "0")) != self.rank:
            return
        if self.action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        top[0].data[...] = float("nan")

    def backward(self, top, propagate_down, bottom):
        pass
