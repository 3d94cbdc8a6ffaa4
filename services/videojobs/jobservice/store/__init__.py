"""SQLAlchemy adapter of the job store: tables, the database handle, the repository."""

from videojobs.jobservice.store.database import Database
from videojobs.jobservice.store.repository import JobRepository

__all__ = ["Database", "JobRepository"]
