"""The feedback database: verdicts, calibrations and their schema migrations."""
