"""``python -m allotment.controller``: the controller's own process (``process.py``)."""

from allotment.controller.process import main

main()
