"""``swiftsd`` command line: one module per subcommand, the shared flags and the shared decoder builder.

Subcommand modules are imported only when their command runs, so ``--help`` stays instant.
"""
