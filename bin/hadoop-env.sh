# Sourced by bin/hadoop and the cluster script: the JVM flags every Hadoop JVM needs on
# Java 17 (Hadoop's own launch scripts add them; we launch java directly). The same list
# goes into the container JVMs through mapred-site.xml.
opens=""
for pkg in java.lang java.lang.reflect java.io java.net java.nio java.util \
           java.util.concurrent java.util.zip java.text java.math \
           sun.nio.ch sun.net.util sun.security.util sun.security.x509; do
  opens+=" --add-opens=java.base/$pkg=ALL-UNNAMED"
done
# C1 only and the serial collector: most of our JVMs are short-lived clients and task JVMs;
# the daemons add MODELSHARD_DAEMON_OPTS on top to get the full JIT back.
export MODELSHARD_JAVA_OPTS="-XX:+UseSerialGC -XX:TieredStopAtLevel=1${opens}"
export MODELSHARD_DAEMON_OPTS="-XX:TieredStopAtLevel=4"
# libhdfs (pydoop) starts its JVM inside the Python process.
export LIBHDFS_OPTS="${LIBHDFS_OPTS:-$MODELSHARD_JAVA_OPTS -Xmx512m}"
unset opens pkg
