"""The web dashboard: server-rendered pages under the service's base URL (``…/dashboard/``),
reached through JupyterHub's OAuth for services (docs/dashboard.md).

``routes`` holds the pages and forms, ``oauth`` the login, ``signing`` the cookies and XSRF
tokens, ``access`` who sees which page, ``reads`` the database queries behind them,
``periods`` and ``display`` what the pages compute and how they show it.
"""
