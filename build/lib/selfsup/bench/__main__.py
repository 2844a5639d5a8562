"""The child process of one bench item: `python -m selfsup.bench ITEM_JSON` prints the item's result as JSON."""

import json
import sys

from selfsup.bench.items import run_item

print(json.dumps(run_item(json.loads(sys.argv[1]))))
