"""Local stand-ins: the demo and what it needs, never shipped to Lambda.

The embedded engine (`local_engine`: DynamoDB Local from npm), the
simulated application (`app_sim`, `live`: it runs the migration's own
workload), the Lambda handlers driven by the local stream runner
(`local_lambda`), and the demo itself (`demo`). The sc migration's data and
workload are its own (`shared.sc.seed`, `shared.sc.workload`).
"""
