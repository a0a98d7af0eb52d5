"""``python -m flaskmodel``."""

from flaskmodel.cli import main

main()
