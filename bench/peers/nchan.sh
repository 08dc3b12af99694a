#!/usr/bin/env bash
# nginx + nchan as a benchmark peer (recipe: /work/shared/PEERS.md).
#   nchan.sh start PORT [WORKERS]   -> prints the master PID, then the worker PIDs
#   nchan.sh stop  PORT
# Run dir: /tmp/ringcast-peers/nchan-PORT. Locations: /pub?id=CH, /sse?id=CH, /nchan_status.
set -euo pipefail
cmd=${1:?start|stop}; port=${2:?PORT}; workers=${3:-1}
dir=/tmp/ringcast-peers/nchan-$port
if [ "$cmd" = stop ]; then
  [ -f "$dir/run/nginx.pid" ] || { echo "no $dir/run/nginx.pid" >&2; exit 1; }
  pid=$(cat "$dir/run/nginx.pid"); kill "$pid"
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || exit 0; sleep 0.1; done
  echo "nginx $pid still running" >&2; exit 1
fi
[ "$cmd" = start ] || { echo "usage: $0 start|stop PORT [WORKERS]" >&2; exit 2; }
if ! [ -f /usr/lib/nginx/modules/ngx_nchan_module.so ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nginx libnginx-mod-nchan >&2
fi
mkdir -p "$dir"/{logs,run,tmp}
cat > "$dir/nginx.conf" <<CONF
load_module /usr/lib/nginx/modules/ngx_nchan_module.so;
worker_processes $workers;
worker_rlimit_nofile 20000;
pid run/nginx.pid;
error_log logs/error.log notice;
events { worker_connections 19000; }
http {
  access_log off;
  client_body_temp_path tmp/body; proxy_temp_path tmp/proxy; fastcgi_temp_path tmp/fcgi;
  uwsgi_temp_path tmp/uwsgi; scgi_temp_path tmp/scgi;
  nchan_shared_memory_size 256M;
  server {
    listen 127.0.0.1:$port backlog=4096;
    location = /pub  { nchan_publisher; nchan_channel_id \$arg_id;
                       nchan_message_buffer_length 1000; nchan_message_timeout 1h; }
    location = /sse  { nchan_subscriber eventsource;  nchan_channel_id \$arg_id; }
    location = /ws   { nchan_subscriber websocket;    nchan_channel_id \$arg_id; }
    location = /nchan_status { nchan_stub_status; }
  }
}
CONF
cd "$dir"
nginx -p "$dir/" -c nginx.conf
for _ in $(seq 50); do [ -s run/nginx.pid ] && break; sleep 0.1; done
master=$(cat run/nginx.pid)
sleep 0.3
echo "$master" $(pgrep -P "$master" | tr '\n' ' ')
