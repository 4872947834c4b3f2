"""What runs environments: the Scorer protocol and in-process scoring (base.py), the verifier
worker pool (pool.py), the remote scorer (remote.py), `make_scorer` (make.py), verify records
(records.py), the HTTP env server (server.py) and the `verify` / `serve-env` commands (cli.py)."""
