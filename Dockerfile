# lbproxy: docker build -t lbproxy . && docker run -v $PWD/lb.yaml:/etc/lbproxy/lbproxy.yaml lbproxy
FROM python:3.11-slim

WORKDIR /src
COPY pyproject.toml README.md ./
COPY lbproxy ./lbproxy
RUN pip install --no-cache-dir . && rm -rf /src

COPY config/example.yaml /etc/lbproxy/lbproxy.yaml
RUN useradd --system --no-create-home lbproxy
USER lbproxy
WORKDIR /
STOPSIGNAL SIGTERM
ENTRYPOINT ["lbproxy"]
CMD ["run", "-c", "/etc/lbproxy/lbproxy.yaml"]
