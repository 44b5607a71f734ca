"""Compact allowed-action masks (issue 15): a catalogue size and the shorter index list, not packbits.

``decisions.allowed_mask``, ``live_transitions.mask`` and ``live_transitions.next_mask`` are rewritten from
``np.packbits`` of a dense bool mask (12.5 kB per row on a 100,000-item catalogue) into the self-describing
format of ``service.store.features.encode_mask``: a 1-byte format tag and the uint32 catalogue size ``n``,
then the allowed (tag 1) or the excluded (tag 2) indices of ``[0, n)``, whichever list is shorter (a tie:
the excluded), as sorted little-endian int32.

A packbits blob does not record the catalogue size the decision saw, only its length in bytes: ``n`` is
taken as ``8 · len(blob)``. That is exact, since the padding bits are 0 (not allowed) and stay not allowed
in either list form. Picking the shorter list keeps a migrated "all active but a few" mask small (its
padding items are listed as exclusions: at most 7 more). The downgrade packs the mask over the stored ``n``
back into bits, so old → new → old gives the same bytes.

The columns keep their type (LargeBinary): only the values change. Rows are streamed in keyset pages of
:data:`BATCH_ROWS` (by primary key), so memory stays one page whatever the table size. The encoding is
written out here rather than imported: a migration must keep meaning what it meant when it was written.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 17:30:00.000000
"""

import struct
from collections.abc import Callable, Sequence

import numpy as np
import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BATCH_ROWS = 1000
"""Rows read and rewritten per page."""

ALLOWED, EXCLUDED = 1, 2
HEADER = struct.Struct("<BI")
INDEX = np.dtype("<i4")

COLUMNS = (
    ("decisions", "event_id", "allowed_mask"),
    ("live_transitions", "id", "mask"),
    ("live_transitions", "id", "next_mask"),
)


def compact_from_packbits(blob: bytes) -> bytes:
    """The compact blob of a packbits mask, over ``n = 8 · len(blob)`` items."""
    mask = np.unpackbits(np.frombuffer(blob, dtype=np.uint8)).astype(bool)
    n_allowed = int(np.count_nonzero(mask))
    if n_allowed < mask.shape[0] - n_allowed:
        tag, indices = ALLOWED, np.flatnonzero(mask)
    else:
        tag, indices = EXCLUDED, np.flatnonzero(~mask)
    return HEADER.pack(tag, mask.shape[0]) + indices.astype(INDEX).tobytes()


def packbits_from_compact(blob: bytes) -> bytes:
    """The packbits blob of a compact mask (its dense mask over the stored ``n``)."""
    tag, n = HEADER.unpack_from(blob)
    indices = np.frombuffer(blob, dtype=INDEX, offset=HEADER.size)
    mask = np.zeros(n, dtype=bool)
    if tag == EXCLUDED:
        mask[:] = True
        mask[indices] = False
    elif tag == ALLOWED:
        mask[indices] = True
    else:
        raise ValueError(f"unknown stored mask format {tag}")
    return np.packbits(mask).tobytes()


def _rewrite(convert: Callable[[bytes], bytes]) -> None:
    """Apply ``convert`` to every non-NULL mask of the three columns, one page of rows at a time."""
    connection = op.get_bind()
    for table_name, key_name, column_name in COLUMNS:
        table = sa.table(table_name, sa.column(key_name), sa.column(column_name, sa.LargeBinary()))
        key, column = table.c[key_name], table.c[column_name]
        update = (
            table.update().where(key == sa.bindparam("_key")).values({column_name: sa.bindparam("_blob")})
        )
        last = None
        while True:
            query = sa.select(key, column).where(column.is_not(None)).order_by(key).limit(BATCH_ROWS)
            if last is not None:
                query = query.where(key > last)
            page = connection.execute(query).all()
            if not page:
                break
            connection.execute(update, [{"_key": k, "_blob": convert(bytes(blob))} for k, blob in page])
            last = page[-1][0]


def upgrade() -> None:
    _rewrite(compact_from_packbits)


def downgrade() -> None:
    _rewrite(packbits_from_compact)
