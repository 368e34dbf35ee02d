"""moto server for jitr's tests, with DynamoDB requests serialised and
Lambda's GetAccountSettings answered.

moto 5.2.5 applies TransactWriteItems item by item and, when a condition fails,
restores a deep copy of the whole table taken before the transaction: two
concurrent requests can erase each other's writes, and a reader can see half a
transaction. DynamoDB itself isolates transactions, so the test server handles
DynamoDB requests one at a time; every other service stays concurrent (long polls).

moto 5.2.5 has no GetAccountSettings (`GET /2016-08-19/account-settings/`). It is
answered here as the Lambda API Reference documents it: `AccountLimit` with
`ConcurrentExecutions` (the account's quota: `MOTO_LAMBDA_CONCURRENCY_QUOTA`,
moto's own variable for enforcing reservations, default 1000, AWS's default) and
`UnreservedConcurrentExecutions` (the quota less every function's reserved
concurrency), and `AccountUsage`.
"""
import json
import os
import sys
import threading

from moto.awslambda import urls as lambda_urls
from moto.awslambda.responses import LambdaResponse
from moto.dynamodb.responses import DynamoHandler
from moto.server import main

_dynamodb = threading.RLock()
_call_action = DynamoHandler.call_action


def _serialised(self):
    with _dynamodb:
        return _call_action(self)


DynamoHandler.call_action = _serialised


def _get_account_settings(self):
    quota = int(os.environ.get("MOTO_LAMBDA_CONCURRENCY_QUOTA", "1000"))
    functions = list(self.backend.list_functions())
    reserved = sum(int(f.reserved_concurrency or 0) for f in functions)
    return 200, {}, json.dumps({
        "AccountLimit": {
            "TotalCodeSize": 80530636800,
            "CodeSizeUnzipped": 262144000,
            "CodeSizeZipped": 52428800,
            "ConcurrentExecutions": quota,
            "UnreservedConcurrentExecutions": quota - reserved,
        },
        "AccountUsage": {"TotalCodeSize": 0, "FunctionCount": len(functions)},
    })


LambdaResponse.get_account_settings = _get_account_settings
lambda_urls.url_paths[r"{0}/(?P<api_version>[^/]+)/account-settings/?$"] = LambdaResponse.dispatch

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
