# The Conveyor image: CLI, worker and Flower. Build: docker build -t conveyor .
# The base image is pulled from Docker Hub on the first build.
FROM python:3.12-slim

# PYTHONUNBUFFERED: log lines reach `docker logs` (and log shippers) as they happen.
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN apt-get update \
 && apt-get install -y --no-install-recommends git \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/conveyor
# Dependencies first, pinned to the tested set (.ci/constraints.txt), in their own layer:
# a change to Conveyor's code rebuilds only the layers below.
COPY pyproject.toml README.md ./
COPY .ci/constraints.txt /opt/conveyor/constraints.txt
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
      > /tmp/requirements.txt \
 && pip install --no-cache-dir -r /tmp/requirements.txt -c constraints.txt \
 && rm /tmp/requirements.txt
COPY coordinator coordinator
COPY worker worker
COPY shared shared
COPY deploy deploy
RUN pip install --no-cache-dir --no-deps .

# Non-root by default (Flower, ad-hoc commands). The compose file runs workers as root
# because they drive the host's Docker socket, which is root-equivalent anyway.
RUN useradd --system --uid 10001 --home-dir /var/lib/conveyor --create-home conveyor
USER conveyor

# 9100: worker metrics (--metrics-port / CONVEYOR_METRICS_PORT); 5555: Flower.
EXPOSE 9100 5555
ENTRYPOINT ["conveyor"]
CMD ["--help"]
