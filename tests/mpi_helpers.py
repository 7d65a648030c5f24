"""Helpers of the tests that start real ``mpiexec`` runs."""


def break_quantization_tables(path):
    """Point every component of a baseline JPEG at quantization table 3, which it lacks: the header (and so
    the dataset's check) still reads, decoding fails."""
    data = bytearray(path.read_bytes())
    sof = data.index(b"\xff\xc0")
    for c in range(data[sof + 9]):
        data[sof + 12 + 3 * c] = 3
    path.write_bytes(bytes(data))
