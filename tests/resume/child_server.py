"""A second server process for the resume tests, sharing the first one's record
database and API key (the resume tokens' secret) and its model server:

    python -m tests.resume.child_server <database url> <LLM /v1 URL> <API key>

prints ``ready <ws url>`` and serves until its stdin closes."""

from __future__ import annotations

import sys

from agent.config import Settings
from pipeline.engines.openai_compat import OpenAICompatLLM
from tests.faults.support import bench_engines, serving


def main() -> None:
    database_url, llm_url, api_key = sys.argv[1:4]
    engines = bench_engines(llm=OpenAICompatLLM(llm_url, "scripted", api_key="unused"))
    with serving(Settings(database_url=database_url, api_key=api_key), engines) as server:
        print(f"ready {server.url}", flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    main()
