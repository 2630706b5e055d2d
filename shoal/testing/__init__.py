"""Test support shipped with Shoal, so that its own suite and downstream projects share one way to
stand up real dependencies."""

from shoal.testing.postgres import TempPostgres, TempPostgresError, find_postgres_bin_dir

__all__ = ["TempPostgres", "TempPostgresError", "find_postgres_bin_dir"]
