"""The proxy: blueprint (proxy.routes) and the modules behind it.

Deliberately empty: gunicorn.conf.py imports proxy.logs in the master, and re-exporting the
blueprint here would import requests and ssl there before the gevent worker can patch them.
"""
