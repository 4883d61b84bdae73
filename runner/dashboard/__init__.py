"""`pgwebhooks dashboard`: pages and a JSON API over the SQL API (see app.py)."""
