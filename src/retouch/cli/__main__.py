"""``python -m retouch.cli`` (and ``accelerate launch -m retouch.cli``): the ``retouch`` command."""

from retouch.cli import main

main()
