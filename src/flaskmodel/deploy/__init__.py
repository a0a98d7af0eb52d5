"""How FlaskModel's processes start and are configured: the foreground stack (`flaskmodel up`,
``stack``), the production deploy set, and the one launch path of gunicorn (``gunicorn_launch``,
``gunicorn_config``, ``gunicorn_hooks``). ``supervisor_conf``, ``nginx_conf`` and ``redis_conf``
render the configs of those programs; ``paths`` says where the stack keeps them."""
