"""Entity ids held by Arrow rather than as Python objects, for the stages that handle large logs.

In pandas, Arrow-backed strings take a few bytes per id where Python ``str`` objects take ~60; as one
Arrow array they sort, encode and compare without a Python object per row.
"""

from __future__ import annotations

import pandas as pd
import pyarrow as pa

ID_STRING = pd.StringDtype("pyarrow")
# ``to_pandas(types_mapper=ARROW_ID_STRINGS.get)``: Arrow strings stay Arrow-backed in pandas.
ARROW_ID_STRINGS = {pa.string(): ID_STRING, pa.large_string(): ID_STRING}


def arrow_strings(series: pd.Series) -> pa.Array:
    """``series`` as one Arrow string array (Arrow-backed columns read from Parquet come in chunks)."""
    values = pa.array(series.astype(ID_STRING), type=pa.string())
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
