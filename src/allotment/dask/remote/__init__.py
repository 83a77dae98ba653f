"""The programs a Dask cluster runs: ``scheduler.py`` and ``worker.py``.

They run in the researcher's environment, where allotment need not be installed, so they
import only the standard library, dask, distributed and tornado; the service sends their text
(``domain.dask_commands``) rather than a module name. Nothing imports them as modules except
tests.
"""
