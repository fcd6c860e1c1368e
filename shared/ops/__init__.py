"""Operations on AWS resources around a migration.

Table definitions from template.yaml (`tables`), enabling streams
(`streams_setup`), backups and restores (`backup`), and the dry run with its
cost estimate (`dryrun`).
"""
