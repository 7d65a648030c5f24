"""The data-parallel rows (``--device mpi``): scripts/mpi_bench.py's allreduce of each model's gradients on
``--ranks`` ranks and the toy's training iteration on 1 against ``--ranks`` ranks, each run under mpiexec."""
import mpi_bench


def plan(args):
    models = [m for m in args.models if m in mpi_bench.MODELS]
    return ([f"allreduce {m}: {args.ranks} ranks" for m in models]
            + [f"train toy: 1 rank, {args.ranks} ranks"])


def rows(ctx):
    models = [m for m in ctx.args.models if m in mpi_bench.MODELS]
    done = mpi_bench.rows(ctx.args.quick, ctx.args.ranks, models)
    for row in done:
        ctx.recorded(row)
    return done


def table(rows_):
    print(mpi_bench.table(rows_))


def missing(args):
    from fastrcnn import comm
    try:
        found = comm.mpiexec()
    except ImportError as exc:
        found, why = None, str(exc)
    else:
        why = "no mpiexec found"
    return None if found else f"--device mpi needs mpi4py and an mpiexec (pip install '.[mpi]'): {why}"
