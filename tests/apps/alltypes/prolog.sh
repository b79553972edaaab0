mkdir -p results
echo prolog of @@JOB_ID@@
cp @@text@@ results/input-copy.txt
