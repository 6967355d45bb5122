"""The "before" figures of the schema-corpus row: llama-cpp-python's own JSON-Schema-to-GBNF
converter over the same corpus, each schema in a forked child so that a crash is counted.

Run as a script (by bench/grammar_rows.py): one JSON line per schema, `{"name", "status",
"reason"}`, status "compiled" (llama.cpp built a grammar sampler from the converter's
output), "failed" (the converter raised, or llama.cpp rejected its grammar: the null result
that was once used and crashed the process), or "crashed" (the child died by a signal or
ran past its time). The model's vocabulary is loaded once, before forking (no weights).
"""

from __future__ import annotations

import json
import os
import select
import signal
import sys
from typing import Any

from schema_corpus import corpus  # this folder is first on a script's path

CHILD_TIMEOUT_S = 20.0


def _attempt(vocab: Any, schema: dict[str, Any]) -> tuple[str, str]:
    import llama_cpp
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        gbnf = json_schema_to_gbnf(json.dumps(schema))
    except Exception as exc:
        return "failed", f"converter: {type(exc).__name__}: {exc}"[:200]
    sampler = llama_cpp.llama_sampler_init_grammar(vocab, gbnf.encode(), b"root")
    if not sampler:
        return "failed", "llama.cpp rejected the converter's grammar"
    llama_cpp.llama_sampler_free(sampler)
    return "compiled", ""


def _in_child(vocab: Any, schema: dict[str, Any]) -> tuple[str, str]:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: measure, report, leave without cleanup
        os.close(read)
        # llama.cpp prints each rejected grammar whole (megabytes for some schemas).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        try:
            status, reason = _attempt(vocab, schema)
        except BaseException as exc:
            status, reason = "failed", f"{type(exc).__name__}: {exc}"[:200]
        os.write(write, json.dumps([status, reason]).encode())
        os._exit(0)
    os.close(write)
    ready, _, _ = select.select([read], [], [], CHILD_TIMEOUT_S)
    data = b""
    if ready:
        while chunk := os.read(read, 65536):
            data += chunk
    else:
        os.kill(pid, signal.SIGKILL)
    os.close(read)
    _, code = os.waitpid(pid, 0)
    if os.WIFSIGNALED(code):
        why = "timed out" if not ready else f"signal {os.WTERMSIG(code)}"
        return "crashed", why
    if not data:
        return "crashed", f"exit status {os.WEXITSTATUS(code)}"
    status, reason = json.loads(data)
    return str(status), str(reason)


def main() -> int:
    from llama_cpp import Llama

    from featurelm.engine.backends.local import packaged_model_path

    llm = Llama(model_path=str(packaged_model_path()), vocab_only=True, verbose=False)
    vocab = llm._model.vocab
    step = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    for name, schema in corpus(step):
        status, reason = _in_child(vocab, schema)
        print(json.dumps({"name": name, "status": status, "reason": reason}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
