{
    echo job=@@JOB_ID@@
    echo dir=@@JOB_DIR@@
    echo name=@@JOB_NAME@@ project=@@PROJECT@@ owner=@@OWNER@@
    echo app=@@APP_NAME@@ version=@@APP_VERSION@@ system=@@SYSTEM@@ cores=@@CORES@@
    echo index=@@SUBJOB_INDEX@@ master=@@MASTER_DIR@@
} >summary.txt
