"""bench/engine_profile.py's reading of a jstack thread dump of DynamoDB Local (no engine needed)."""

from __future__ import annotations

from bench.engine_profile import classify

DUMP = '''"SQLiteQueue[]" #26 prio=5 os_prio=0 cpu=34754.33ms elapsed=49.39s tid=0x1 nid=0xe3f runnable  [0x2]
   java.lang.Thread.State: RUNNABLE
\tat com.almworks.sqlite4java._SQLiteSwiggedJNI.sqlite3_step(Native Method)
\tat com.almworks.sqlite4java.SQLiteStatement.step(SQLiteStatement.java:295)
\tat software.amazon.dynamodb.services.local.shared.access.sqlite.SQLiteDBAccessJob.getStreamDescription(SQLiteDBAccessJob.java:198)
\tat software.amazon.dynamodb.services.local.shared.access.sqlite.SQLiteDBAccess$25.doWork(SQLiteDBAccess.java:2681)
\tat java.lang.Thread.run(java.base@17.0.15/Thread.java:840)

"qtp-12" #40 prio=5 os_prio=0 cpu=1.00ms elapsed=49.39s tid=0x3 nid=0xe40 waiting on condition  [0x4]
   java.lang.Thread.State: WAITING (parking)
\tat software.amazon.dynamodb.services.local.shared.access.sqlite.AmazonDynamoDBOfflineSQLiteJob.get(AmazonDynamoDBOfflineSQLiteJob.java:80)
\tat software.amazon.dynamodb.services.local.shared.access.sqlite.SQLiteDBAccess.getTableInfo(SQLiteDBAccess.java:2731)
\tat software.amazon.dynamodb.services.local.shared.partiql.translator.StatementTranslator.getTableInfo(StatementTranslator.java:162)
\tat software.amazon.dynamodb.services.local.shared.partiql.translator.InsertStatementTranslator.translate(InsertStatementTranslator.java:69)
\tat software.amazon.dynamodb.services.local.dispatchers.BatchExecuteStatementDispatcher.enact(BatchExecuteStatementDispatcher.java:17)

"qtp-13" #41 prio=5 os_prio=0 cpu=1.00ms elapsed=49.39s tid=0x5 nid=0xe41 waiting on condition  [0x6]
   java.lang.Thread.State: TIMED_WAITING (parking)
\tat java.lang.Thread.sleep(Native Method)
'''


def test_a_dump_gives_the_sqlite_threads_job_and_each_requests_engine_call() -> None:
    # GIVEN a dump with the SQLite thread busy describing a stream, one request thread serving an INSERT
    # batch and waiting for a table lookup, and one idle thread
    job, requests = classify(DUMP)
    # THEN the SQLite thread's job, and the request's operation, engine call and the frame that made it
    assert job == "SQLiteDBAccessJob.getStreamDescription"
    assert requests == [("BatchExecuteStatement", "SQLiteDBAccess.getTableInfo", "StatementTranslator.getTableInfo")]


def test_an_idle_sqlite_thread_is_no_job() -> None:
    idle = '"SQLiteQueue[]" #26 prio=5\n   java.lang.Thread.State: WAITING (parking)\n\tat java.lang.Object.wait(Native Method)\n'
    assert classify(idle) == (None, [])
