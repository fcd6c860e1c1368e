"""The composition root: `dynashift`'s commands build the parts and wire them.

`main` is the click group; `context` the shared options and output helpers;
`backup`, `cutover` and `verify` the commands of those components; `status`
the status report. Only cli and sim may import handlers/ and backfill/.
Not shipped to Lambda.
"""
