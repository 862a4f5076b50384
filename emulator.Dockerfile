# The Cloud Tasks emulator on its own, for a compose file shared with services in any language.
#
#   docker build -f emulator.Dockerfile -t cloud-tasks-emulator .
#   docker run --rm -p 8123:8123 -p 8124:8124 -v cloud-tasks:/data cloud-tasks-emulator
#
# gRPC on 8123, OIDC keys and the web page on 8124, state kept in the /data volume. Every
# setting is an environment variable (see docs/emulator.md); set CLOUD_TASKS_EMULATOR_ISSUER to
# the URL other containers reach port 8124 at (say http://emulator:8124).
FROM python:3.12-slim

WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir . && mkdir /data && chown nobody /data

ENV CLOUD_TASKS_EMULATOR_BIND=0.0.0.0 \
    CLOUD_TASKS_EMULATOR_PORT=8123 \
    CLOUD_TASKS_EMULATOR_TOKEN_PORT=8124 \
    CLOUD_TASKS_EMULATOR_STATE_FILE=/data/emulator.sqlite3
USER nobody
VOLUME /data
EXPOSE 8123 8124
CMD ["cloud-tasks-emulator"]
