# The Conveyor image: CLI, worker and Flower. Build: docker build -t conveyor .
FROM python:3.12-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends git \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/conveyor
COPY pyproject.toml README.md ./
COPY coordinator coordinator
COPY worker worker
COPY shared shared
COPY deploy deploy
RUN pip install --no-cache-dir .
ENTRYPOINT ["conveyor"]
CMD ["--help"]
