"""Local stand-ins: the demo and what it needs, never shipped to Lambda.

The embedded engine (`local_engine`: DynamoDB Local from npm), synthetic
legacy data (`seed`), the simulated application and its workload
(`app_sim`, `workload`, `live`), the Lambda handlers driven by the local
stream runner (`local_lambda`), and the demo itself (`demo`).
"""
