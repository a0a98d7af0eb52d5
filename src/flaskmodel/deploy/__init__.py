"""Process configs for FlaskModel: the foreground stack (`flaskmodel up`) and the deploy set."""

from __future__ import annotations

import logging

from flaskmodel.deploy.render import StackPaths, render_deploy, render_stack

logger = logging.getLogger(__name__)

__all__ = ["StackPaths", "render_deploy", "render_stack"]
