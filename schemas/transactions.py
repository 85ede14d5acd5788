"""One transaction shape for the import commands: all or nothing, and a dry run that validates
against the database (references, constraints) but commits nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg


@asynccontextmanager
async def import_transaction(conn: asyncpg.Connection, dry_run: bool) -> AsyncIterator[None]:
    """Run the block in one transaction: rolled back on any error or when `dry_run`, else committed."""
    tx = conn.transaction()
    await tx.start()
    try:
        yield
    except BaseException:
        await tx.rollback()
        raise
    if dry_run:
        await tx.rollback()
    else:
        await tx.commit()
