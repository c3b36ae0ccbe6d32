"""The local function runtime: stack.yml, per-function venvs and warm worker pools;
and Knative function.yaml Services, run as warm web apps (`WebAppPool`).

```python
stack = load_stack(Path("stack.yml"))
spec = stack.functions["echo"]
check_handler_syntax(spec)
python = ensure_venv(spec.handler, cache_dir, progress=print)   # blocking: use a thread
pool = FunctionPool(spec.name, python=python, handler_dir=spec.handler, lang=spec.lang,
                    workers=spec.workers, environment=spec.environment)
await pool.start()
outcome = await pool.invoke(Invocation(body=b"{}"), timeout=spec.timeout)
await pool.stop()
```
"""

from veba.functions.build import BuildError, ensure_venv
from veba.functions.knative import load_functions
from veba.functions.runtime import FunctionRuntime
from veba.functions.stack import (
    LANGS,
    FunctionSpec,
    Stack,
    StackError,
    check_handler_syntax,
    load_stack,
)
from veba.functions.supervisor import FunctionLoadError, FunctionPool, Invocation, Outcome
from veba.functions.webapp import WebAppPool

__all__ = [
    "LANGS",
    "BuildError",
    "FunctionLoadError",
    "FunctionPool",
    "FunctionRuntime",
    "FunctionSpec",
    "Invocation",
    "Outcome",
    "Stack",
    "StackError",
    "WebAppPool",
    "check_handler_syntax",
    "ensure_venv",
    "load_functions",
    "load_stack",
]
