"""Modules: the module API, the loader, the host that runs them, and the built-in ones.

`api` (what a module is), `loader` (config to modules), `host` (deadlines, isolation, the
node's hook points), `policy` (the built-in policy module, DESIGN.md section 6), `reports` (an
example module to copy). docs/design.md section 10.
"""
