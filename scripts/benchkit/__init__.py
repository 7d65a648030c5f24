"""The benchmark's parts (scripts/bench.py is the command): the workloads (``models``), the PyTorch and OpenCV
twins (``twins``), timing and the row record (``core``), the report (``report``), and the rows modules
``rows_cpu`` and ``rows_gpu``.

A rows module is one entry of ``ROW_MODULES[device]`` in bench.py (a module name), so that another set of
rows joins a device's run with one line there. It defines:

  plan(args) -> list of str     the rows it would make with these arguments, in order, one line each
                                ("kind model ...: implementations"); used by --dry-run, so it must import
                                neither CuPy nor PyTorch
  rows(ctx) -> list of dict     runs its rows and returns them as JSON-able dicts (``core.Row.finish()``, or
                                a dict of its own with "row", "model" and "workload"); ``ctx`` is a
                                ``core.Context``: ``ctx.args`` (bench.py's arguments), ``ctx.workdir``,
                                ``ctx.notes`` (append report-wide notes), ``ctx.log(text)``, and
                                ``ctx.recorded(row)``, to be called with each finished row
  table(rows)                   prints its rows' table (bench.py then prints the notes and the machine)

and optionally:

  settings(args) -> dict        entries added to the JSON's "settings" (sizes, the device's description)
  missing(args) -> str or None  why this machine cannot run the rows (bench.py then exits with status 2)
"""
