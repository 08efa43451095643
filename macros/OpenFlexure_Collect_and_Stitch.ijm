// OpenFlexure Microscope - collect and stitch one smart-stack scan with Fiji (ofm-tiling).
//
//  1. runs `ofm-tiling collect SCAN`, which puts the image to use of every position into SCAN/use/
//     with TileConfiguration.txt (the ofm-tiling Python package must be installed);
//  2. runs Plugins > Stitching > Grid/Collection stitching on SCAN/use/ for registration only, with
//     the option string `ofm-tiling fiji-macro SCAN --options` prints (what `stitch --backend fiji` uses);
//  3. has `ofm-tiling fiji-macro SCAN --check LOG` check Fiji's registration against the stage
//     positions (the same checks as `stitch --backend fiji`: glass tiles and stray groups that Fiji
//     puts at (0, 0) are placed by the corrected stage model) and write use/TileConfiguration.checked.txt;
//  4. lets Fiji fuse the checked positions and saves SCAN/stitched-fiji/mosaic.tif (one 8-bit channel
//     per colour) and mosaic.jpg. That folder is marked as ofm-tiling's own, so collecting skips it.
//
// Use: open it in Fiji's script editor (File > Open..., then Run), or install it with
// `ofm-tiling install-fiji-macro` and pick Plugins > OpenFlexure > Collect and Stitch.
// Without a screen:  ImageJ-linux64 --headless --console -macro OpenFlexure_Collect_and_Stitch.ijm "scan=[/path/to/scan]"
// Settings (all optional when run from the menu; scan=[...] is needed headless):
//   scan=[folder]  command=[full path of ofm-tiling]  collect=no (skip step 1)
//   use=[folder]  out=[folder]  select=tag|sharpest  grid=COLSxROWS  overlap=FRACTION
// The ofm-tiling command path you pick is remembered in Fiji's preferences (ofm_tiling.command).
//
// Every Fiji rule (option strings, checks) lives in the ofm-tiling command; this macro only asks it.
// When a command fails, its error text is shown.

var args = "";
var interactive = false;
var headless = false;
var command = "ofm-tiling";
var use = "";
var registered = "";
var scanArg = "";
var useArg = "";

args = getArgument();
interactive = (args == "");
headless = (call("java.awt.GraphicsEnvironment.isHeadless") == "true");
command = setting("command", call("ij.Prefs.get", "ofm_tiling.command", "ofm-tiling"));

// ---- the scan folder
scan = setting("scan", "");
if (scan == "") {
    if (!interactive || headless)
        fail("no scan folder given: run this macro with the argument scan=[/path/to/scan]");
    scan = getDirectory("Choose an OpenFlexure scan folder");
    if (scan == "")
        exit();
}
scan = folderPath(scan);
if (!File.isDirectory(scan))
    fail("the scan folder " + scan + " does not exist");
use = folderPath(setting("use", scan + "use"));
out = folderPath(setting("out", scan + "stitched-fiji"));
layoutFile = use + "TileConfiguration.txt";

// ---- 1. collect
collectFirst = setting("collect", "yes");
if (collectFirst != "no") {
    before = -1;
    if (File.exists(layoutFile))
        before = File.lastModified(layoutFile);
    print("ofm-tiling: collecting " + scan + " (" + command + " collect)");
    result = collect(scan);
    if (indexOf(result, "Cannot run program") >= 0 && interactive && !headless) {
        // Fiji started from a desktop icon often lacks the PATH of the Python environment.
        showMessage("ofm-tiling not found", "Fiji could not run the command '" + command + "'.\n \n"
            + "Click OK, then locate the ofm-tiling program of the Python environment where\n"
            + "ofm-tiling is installed (e.g. .../venv/bin/ofm-tiling or ...\\Scripts\\ofm-tiling.exe).");
        picked = File.openDialog("Locate the ofm-tiling command");
        if (picked != "") {
            command = picked;
            call("ij.Prefs.set", "ofm_tiling.command", command);
            result = collect(scan);
        }
    }
    if (indexOf(result, "Cannot run program") >= 0)
        fail("the command '" + command + "' was not found, so the scan was not collected.\n"
            + "Install ofm-tiling (pip install ofm-tiling), or give the full path of the command: "
            + "command=[/path/to/venv/bin/ofm-tiling] (or pick it when asked, from the Plugins menu).\n"
            + "Java said: " + result);
    print(result);
    after = -1;
    if (File.exists(layoutFile))
        after = File.lastModified(layoutFile);
    if (after == -1 || after == before)
        fail("'" + command + " collect' did not write " + layoutFile + ":\n" + result);
}
if (!File.exists(layoutFile))
    fail(layoutFile + " does not exist: collect the scan first (ofm-tiling collect " + scan + ")");
if (indexOf(use, "[") >= 0 || indexOf(use, "]") >= 0)
    fail("Fiji's stitching cannot read a folder whose path contains [ or ]: rename " + use);

// ---- 2. register (registration only: Fiji's positions are checked before anything is fused)
scanArg = substring(scan, 0, lengthOf(scan) - 1);
useArg = substring(use, 0, lengthOf(use) - 1);
outArg = substring(out, 0, lengthOf(out) - 1);
options = ask("--options");
registered = use + "TileConfiguration.registered.txt";
if (File.exists(registered))
    removed = File.delete(registered);
setBatchMode(true);
logBefore = lengthOf(getInfo("log"));
print("ofm-tiling: registering " + use + " with Fiji");
run("Grid/Collection stitching", options);
if (!File.exists(registered))
    fail("Grid/Collection stitching wrote no " + registered + " (see the Log window)");

// ---- 3. check Fiji's registration (ofm-tiling's rules, the same as stitch --backend fiji)
logFile = getDirectory("temp") + "ofm-tiling-fiji-log.txt";
logText = getInfo("log");
File.saveString(substring(logText, minOf(logBefore, lengthOf(logText))), logFile);
checked = exec(command, "fiji-macro", scanArg, "--use", useArg, "--check", logFile, "--out", outArg,
    "--errors-to-stdout");
removed = File.delete(logFile);
if (indexOf(checked, "ofm-tiling: checked positions in") < 0)
    fail("'" + command + " fiji-macro --check' failed:\n" + checked);
print(String.trim(checked));

// ---- 4. fuse the checked positions and save
fuseOptions = ask("--fuse-options");
imagesBefore = nImages;
print("ofm-tiling: fusing the checked positions");
run("Grid/Collection stitching", fuseOptions);
if (nImages == imagesBefore)
    fail("Grid/Collection stitching produced no fused image (see the Log window)");
saveAs("Tiff", out + "mosaic.tif");
print("ofm-tiling: saved " + out + "mosaic.tif (" + getWidth() + " x " + getHeight() + " px)");
if (getWidth() <= 65500 && getHeight() <= 65500) {
    saveAs("Jpeg", out + "mosaic.jpg");
    print("ofm-tiling: saved " + out + "mosaic.jpg");
} else {
    print("ofm-tiling: no mosaic.jpg: JPEG cannot hold more than 65500 px a side");
}
print("ofm-tiling: Fiji's registration in " + registered + ", checked in " + use + "TileConfiguration.checked.txt");
print("ofm-tiling: done");
if (interactive && !headless)
    setBatchMode("exit and display");

// ---- helpers

function setting(key, fallback) {
    // ImageJ's own option parser: key=value or key=[value with spaces].
    return call("ij.Macro.getValue", args + " ", key, fallback);
}

function folderPath(path) {
    path = replace(path, "\\\\", "/");
    if (!endsWith(path, "/"))
        path = path + "/";
    return path;
}

function fail(message) {
    print("ofm-tiling: ERROR: " + message);
    exit("ofm-tiling: " + message);
}

function ask(what) {
    // An option string from the ofm-tiling command (the one home of Fiji's options).
    answer = String.trim(exec(command, "fiji-macro", scanArg, "--use", useArg, what, "--errors-to-stdout"));
    if (!startsWith(answer, "type=["))
        fail("'" + command + " fiji-macro " + what + "' failed:\n" + answer);
    return answer;
}

function collect(scan) {
    // exec() passes each argument as is (paths may hold spaces) and returns what the command printed
    // on stdout; through sh, its error messages (stderr) are returned too. Java's "Cannot run
    // program ..." (or the same words from sh) means the command was not found.
    select = setting("select", "tag");
    grid = setting("grid", "");
    overlap = setting("overlap", "");
    useArg = substring(use, 0, lengthOf(use) - 1);
    scan = substring(scan, 0, lengthOf(scan) - 1);
    if (startsWith(getInfo("os.name"), "Windows")) {
        if (grid != "" && overlap != "")
            return exec(command, "collect", scan, "--use", useArg, "--select", select, "--grid", grid, "--overlap", overlap);
        if (grid != "")
            return exec(command, "collect", scan, "--use", useArg, "--select", select, "--grid", grid);
        if (overlap != "")
            return exec(command, "collect", scan, "--use", useArg, "--select", select, "--overlap", overlap);
        return exec(command, "collect", scan, "--use", useArg, "--select", select);
    }
    sh = "if command -v \"$0\" >/dev/null 2>&1; then exec \"$0\" \"$@\" 2>&1; fi; "
        + "echo \"Cannot run program \\\"$0\\\": not found\"";
    if (grid != "" && overlap != "")
        return exec("/bin/sh", "-c", sh, command, "collect", scan, "--use", useArg, "--select", select, "--grid", grid, "--overlap", overlap);
    if (grid != "")
        return exec("/bin/sh", "-c", sh, command, "collect", scan, "--use", useArg, "--select", select, "--grid", grid);
    if (overlap != "")
        return exec("/bin/sh", "-c", sh, command, "collect", scan, "--use", useArg, "--select", select, "--overlap", overlap);
    return exec("/bin/sh", "-c", sh, command, "collect", scan, "--use", useArg, "--select", select);
}
