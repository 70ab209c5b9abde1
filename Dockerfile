# lbproxy: docker build -t lbproxy . && docker run -v $PWD/lb.yaml:/etc/lbproxy/lbproxy.yaml lbproxy
#
# The image runs the compiled build: the L7 data path compiled by mypyc from the same source
# (setup.py, LBPROXY_COMPILE=1), which spends less CPU per request (benchmarks/README.md).
# `docker build --build-arg LBPROXY_COMPILE=0 .` builds the pure-Python one.
FROM python:3.11-slim AS build
ARG LBPROXY_COMPILE=1
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY lbproxy ./lbproxy
RUN LBPROXY_COMPILE=$LBPROXY_COMPILE pip wheel --no-cache-dir --no-deps -w /wheels .

FROM python:3.11-slim
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels

COPY config/example.yaml /etc/lbproxy/lbproxy.yaml
RUN useradd --system --no-create-home lbproxy
USER lbproxy
WORKDIR /
STOPSIGNAL SIGTERM
ENTRYPOINT ["lbproxy"]
CMD ["run", "-c", "/etc/lbproxy/lbproxy.yaml"]
