# Records when the handler starts for each power event: "<Key> <subject> <vm> <time>".
import json
import os
import time


def handle(event, context):
    started = time.time()
    ce = json.loads(event.body)
    data = ce.get("data") or {}
    vm = ((data.get("Vm") or {}).get("Vm") or {}).get("Value", "")
    line = f"{data.get('Key')} {ce.get('subject')} {vm} {started:.6f}\n"
    fd = os.open(os.environ["OUT"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
    return {"statusCode": 200, "body": ""}
