"""moto server for jitr's tests, with DynamoDB requests serialised.

moto 5.2.5 applies TransactWriteItems item by item and, when a condition fails,
restores a deep copy of the whole table taken before the transaction: two
concurrent requests can erase each other's writes, and a reader can see half a
transaction. DynamoDB itself isolates transactions, so the test server handles
DynamoDB requests one at a time; every other service stays concurrent (long polls).
"""
import sys
import threading

from moto.dynamodb.responses import DynamoHandler
from moto.server import main

_dynamodb = threading.RLock()
_call_action = DynamoHandler.call_action


def _serialised(self):
    with _dynamodb:
        return _call_action(self)


DynamoHandler.call_action = _serialised

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
