"""``flaskmodel bench``: benchmark models, the in-process limit, and wrk against the real stack."""
