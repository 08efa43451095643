// OpenFlexure Microscope - collect and stitch one smart-stack scan with Fiji (ofm-tiling).
//
//  1. runs `ofm-tiling collect SCAN`, which puts the image to use of every position into SCAN/use/
//     with TileConfiguration.txt (the ofm-tiling Python package must be installed);
//  2. runs Plugins > Stitching > Grid/Collection stitching on SCAN/use/ with the positions from
//     TileConfiguration.txt: the same options as `ofm-tiling stitch --backend fiji`;
//  3. saves the fused image as SCAN/stitched-fiji/mosaic.tif (one 8-bit channel per colour) and
//     mosaic.jpg, and says which tiles Fiji could not place.
//
// Use: open it in Fiji's script editor (File > Open..., then Run), or install it with
// `ofm-tiling install-fiji-macro` and pick Plugins > OpenFlexure > Collect and Stitch.
// Without a screen:  ImageJ-linux64 --headless --console -macro OpenFlexure_Collect_and_Stitch.ijm "scan=[/path/to/scan]"
// Settings (all optional when run from the menu; scan=[...] is needed headless):
//   scan=[folder]  command=[full path of ofm-tiling]  collect=no (skip step 1)
//   use=[folder]  out=[folder]  select=tag|sharpest  grid=COLSxROWS  overlap=FRACTION
// The ofm-tiling command path you pick is remembered in Fiji's preferences (ofm_tiling.command).
//
// Keep the option string below in step with ofm_tiling/fiji.py: tests/test_fiji.py checks that both
// read back to the same values with ImageJ's own option parser.

var args = "";
var interactive = false;
var headless = false;
var command = "ofm-tiling";
var use = "";
var registered = "";

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
    if (startsWith(result, "Cannot run program") && interactive && !headless) {
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
    if (startsWith(result, "Cannot run program"))
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

// ---- 2. stitch (absent flags mean false; absent keys reuse the previous run's values)
registered = use + "TileConfiguration.registered.txt";
if (File.exists(registered))
    removed = File.delete(registered);
directory = substring(use, 0, lengthOf(use) - 1);
options = "type=[Positions from file] order=[Defined by TileConfiguration]"
    + " directory=[" + directory + "] layout_file=[TileConfiguration.txt]"
    + " fusion_method=[Linear Blending] regression_threshold=0.30"
    + " max/avg_displacement_threshold=2.50 absolute_displacement_threshold=3.50"
    + " compute_overlap subpixel_accuracy"
    + " computation_parameters=[Save computation time (but use more RAM)]"
    + " image_output=[Fuse and display]";
setBatchMode(true);
imagesBefore = nImages;
print("ofm-tiling: stitching " + use);
run("Grid/Collection stitching", options);
if (nImages == imagesBefore)
    fail("Grid/Collection stitching produced no fused image (see the Log window)");
reportDropped(use);

// ---- 3. save
File.makeDirectory(out);
if (!File.isDirectory(out))
    fail("cannot create the output folder " + out);
saveAs("Tiff", out + "mosaic.tif");
print("ofm-tiling: saved " + out + "mosaic.tif (" + getWidth() + " x " + getHeight() + " px)");
if (getWidth() <= 65500 && getHeight() <= 65500) {
    saveAs("Jpeg", out + "mosaic.jpg");
    print("ofm-tiling: saved " + out + "mosaic.jpg");
} else {
    print("ofm-tiling: no mosaic.jpg: JPEG cannot hold more than 65500 px a side");
}
print("ofm-tiling: registered positions in " + registered);
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

function collect(scan) {
    // exec() passes each argument as is (paths may hold spaces); it returns the output, or
    // Java's "Cannot run program ..." when the command is not found.
    select = setting("select", "tag");
    grid = setting("grid", "");
    overlap = setting("overlap", "");
    useArg = substring(use, 0, lengthOf(use) - 1);
    scan = substring(scan, 0, lengthOf(scan) - 1);
    if (grid != "" && overlap != "")
        return exec(command, "collect", scan, "--use", useArg, "--select", select, "--grid", grid, "--overlap", overlap);
    if (grid != "")
        return exec(command, "collect", scan, "--use", useArg, "--select", select, "--grid", grid);
    if (overlap != "")
        return exec(command, "collect", scan, "--use", useArg, "--select", select, "--overlap", overlap);
    return exec(command, "collect", scan, "--use", useArg, "--select", select);
}

function reportDropped(use) {
    // Fiji writes tiles that lost every link at (0.0, 0.0); they are missing from the fused image.
    if (!File.exists(registered)) {
        print("ofm-tiling: warning: Fiji wrote no " + registered);
        return;
    }
    stageText = File.openAsString(use + "TileConfiguration.txt");
    lines = split(File.openAsString(registered), "\n");
    dropped = "";
    count = 0;
    for (i = 0; i < lines.length; i++) {
        name = tileName(lines[i]);
        if (name != "") {
            xy = coordinates(lines[i]);
            if (xy[0] == 0 && xy[1] == 0) {
                stage = stagePosition(stageText, name);
                if (abs(stage[0]) + abs(stage[1]) > 1) {
                    dropped = dropped + " " + name;
                    count++;
                }
            }
        }
    }
    if (count > 0)
        print("ofm-tiling: warning: Fiji could not place " + count + " tile(s), missing from the mosaic:" + dropped);
}

function coordinates(line) {
    inner = substring(line, lastIndexOf(line, "(") + 1, lastIndexOf(line, ")"));
    parts = split(inner, ",");
    return newArray(parseFloat(String.trim(parts[0])), parseFloat(String.trim(parts[1])));
}

function tileName(line) {
    // The name of a "name; ; (x, y)" line, or "" for comments and headers. (The macro
    // language evaluates both sides of && and ||, hence the nested tests.)
    line = String.trim(line);
    if (startsWith(line, "#"))
        return "";
    if (indexOf(line, ";") <= 0)
        return "";
    if (indexOf(line, "(") < 0)
        return "";
    return String.trim(substring(line, 0, indexOf(line, ";")));
}

function stagePosition(text, name) {
    // (Returning an array from inside a loop returns nothing in the macro language.)
    lines = split(text, "\n");
    xy = newArray(0, 0);
    for (i = 0; i < lines.length; i++) {
        found = tileName(lines[i]);  // a string function must be assigned before comparing
        if (found == name)
            xy = coordinates(lines[i]);
    }
    return xy;
}
