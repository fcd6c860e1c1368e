"""dynashift's library, in layers; each imports only the layers below it.

    cli       the composition root: `dynashift`'s commands (not in the Lambda artifact)
    sim       local stand-ins and the demo (not in the Lambda artifact)
    (handlers/, backfill/: the Lambda entry points and the backfill worker)
    cutover   the switch protocol, its gate and the router
    verify    both-ways verification and repair
    streams   the mirror engines, the local runner, drain and coverage
    ops       tables, streams set-up, backups, the dry run
    protocol  the write protocol: every conditional write to the target
    store     the control table's item families
    core      settings, errors, codec, AWS clients, capacity, the migration contract

`shared.sc` is the sc migration, a plug-in: the engine loads it by name from
settings and never imports it. The layers are a contract that
tests/static/test_layers.py checks with import-linter (pyproject.toml).
"""
