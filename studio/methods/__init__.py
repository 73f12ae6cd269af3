"""One self-contained file per method: typed ``Params`` + ``run(params, manager)`` generator."""
