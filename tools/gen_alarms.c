/* gen_alarms.c - seeded generator of labelled alarm and incident texts, English and Chinese.
 *
 *   gen_alarms [--seed N] [--count N] [--split train|test] [--zh FRACTION] [-o FILE]
 *
 * Writes JSON lines {"text": "...", "label": "..."}: what operators of wind farms,
 * substations and solar parks, data centres, networks, IT services and trading
 * surveillance send to a language model, each labelled with the kind of answer it
 * needs (the response pattern a prompt template serves):
 *
 *   triage        a fresh alarm: how urgent, what to check first
 *   root-cause    repeats, correlated faults, "why does this keep happening"
 *   runbook       how-to: the procedure, steps, checklist for a known fault
 *   escalate      safety or wide impact: page people now
 *   ignore-noise  tests, heartbeats, flapping, suppressed or duplicate alarms
 *   maintenance   slow degradation and trends: plan work before it fails
 *   recovery      cleared, restored, back in service: verify and close
 *   summary       shift handovers, daily and weekly reports
 *
 * The label is the situation, not the machine: every label occurs on every kind of
 * equipment, and the same fault appears under several labels. Texts vary by sentence
 * frame, synonyms, identifiers, values and units, and carry the noise of real
 * monitoring: SCADA and syslog prefixes, severities that disagree with the text,
 * ticket references, tags, upper-case consoles and typos.
 *
 * The test split holds phrasings the training split never shows: one sentence frame in
 * four of every label and language, and the last synonym of every list of three or more,
 * appear only in the test split (half of its texts use such a synonym where one exists).
 * So a model scores well on it only by generalising past the wording it learned.
 * The same seed and arguments give the same bytes. Exit status: 0, 64 usage, 1 I/O.
 */
#include "../kernels/rng.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* --- content --- */

/* Lists of variants are '|'-separated strings. */

typedef struct {
    const char *en, *zh; /* fault phrase variants */
    const char *meas_en, *meas_zh;
    const char *unit;  /* C bar mm/s rpm A kV MW % ms Hz GB s score */
    float lo, hi, lim; /* alarm values are drawn in [lo, hi]; lim the limit */
} Fault;

typedef struct {
    const char *en, *zh;       /* names */
    const char *id_en, *id_zh; /* printf formats of identifiers, one %d each */
    const char *part_en, *part_zh;
    const char *code; /* alarm code prefix */
    Fault faults[4];
} Equip;

typedef struct {
    const char *site_en, *site_zh, *site_code;
    const char *severe_en, *severe_zh, *impact_en, *impact_zh;
    Equip equip[6];
} Domain;

static const Domain domains[] = {
    {"Windpark Nordsee|Hollow Ridge wind farm|WF Kestrel Bay|Moorland wind park",
     "张北风电场|华能如东风场|达坂城风电场|白云山风场",
     "WF1|NSEE|KBAY|HRDG",
     "fire detected in the nacelle|smoke coming out of the nacelle|blade failure, fragments on "
     "the ground|rotor overspeed and the brake failed|technician injured in the hub|arc flash in "
     "the converter cabinet",
     "机舱起火|机舱冒烟|叶片断裂碎片落地|转子超速且制动失效|轮毂内人员受伤|变流器柜发生电弧",
     "turbine cannot be stopped|whole collector string offline, {mw} MW lost|crew still on "
     "site|access road must be closed|grid operator demands confirmation now",
     "机组无法停机|整条集电线路停运，损失{mw}MW|现场仍有人员|需要封闭道路|电网调度要求立即确认",
     {{"gearbox|gear box|GBX|main gearbox",
       "齿轮箱|主齿轮箱|增速箱",
       "WTG-%02d|T%02d|WT%03d|WTG%02d",
       "%d号风机|F%02d|%d号机组",
       "main bearing|oil filter|lube pump|HSS bearing",
       "主轴承|滤芯|润滑泵|高速轴轴承",
       "GBX",
       {{"bearing temperature high|bearing overtemperature|high bearing temp|bearing running hot",
         "轴承温度过高|轴承超温|轴承温度高|轴承发热", "bearing temp|bearing temperature",
         "轴承温度", "C", 84, 99, 85},
        {"oil pressure low|low lube oil pressure|lubrication pressure too low|oil pressure drop",
         "油压低|润滑油压力低|油压下降", "oil pressure", "油压", "bar", 0.3f, 1.4f, 1.5f},
        {"vibration high|excessive vibration|vibration alarm|abnormal vibration",
         "振动过大|振动超限|振动异常", "vibration", "振动", "mm/s", 7.5f, 16, 7.1f},
        {"oil temperature high|oil overheating|hot gear oil", "油温过高|油温超限|齿轮油温度高",
         "oil temp", "油温", "C", 70, 88, 70}}},
      {"generator|gen|genset",
       "发电机|电机",
       "WTG-%02d|T%02d|WT%03d",
       "%d号风机|F%02d",
       "slip ring|carbon brushes|cooling fan|encoder",
       "滑环|碳刷|冷却风扇|编码器",
       "GEN",
       {{"stator winding overtemperature|winding temperature high|hot stator winding",
         "定子绕组超温|绕组温度过高|绕组温度高", "winding temp", "绕组温度", "C", 140, 165, 140},
        {"generator overspeed|rotor overspeed|speed above limit", "发电机超速|转速超限|超速",
         "generator speed", "转速", "rpm", 1900, 2150, 1850},
        {"insulation resistance low|insulation fault|earth fault", "绝缘电阻低|绝缘故障|接地故障",
         "insulation resistance", "绝缘电阻", "Mohm", 0.2f, 1.8f, 2},
        {"slip ring sparking|brush wear alarm|slip ring temperature high",
         "滑环打火|碳刷磨损告警|滑环温度高", "slip ring temp", "滑环温度", "C", 90, 120, 90}}},
      {"pitch system|pitch drive|blade pitch",
       "变桨系统|变桨|变桨驱动",
       "WTG-%02d|T%02d|WT%03d",
       "%d号风机|F%02d",
       "pitch motor|pitch battery|pitch bearing|slip ring",
       "变桨电机|变桨电池|变桨轴承|滑环",
       "PIT",
       {{"pitch motor overcurrent|pitch drive overcurrent|overcurrent on pitch axis",
         "变桨电机过流|变桨驱动过流|变桨轴过流", "motor current", "电机电流", "A", 42, 70, 40},
        {"pitch angle deviation|blade angle mismatch|pitch asymmetry",
         "变桨角度偏差|叶片角度不一致|变桨不同步", "angle deviation", "角度偏差", "deg", 2.1f, 6,
         2},
        {"pitch battery fault|pitch backup battery voltage low|accumulator charge low",
         "变桨电池故障|后备电池电压低|蓄能器压力低", "battery voltage", "电池电压", "V", 180, 215,
         220},
        {"pitch communication lost|pitch CAN bus error", "变桨通讯中断|变桨CAN总线故障",
         "bus errors", "总线错误", "count", 20, 300, 10}}},
      {"yaw system|yaw drive|nacelle yaw",
       "偏航系统|偏航|偏航驱动",
       "WTG-%02d|T%02d|WT%03d",
       "%d号风机|F%02d",
       "yaw brake pads|yaw motor|yaw gear|wind vane",
       "偏航刹车片|偏航电机|偏航齿轮|风向标",
       "YAW",
       {{"yaw misalignment|nacelle misaligned with wind|yaw error large",
         "偏航对风偏差大|机舱未对风|偏航误差大", "yaw error", "偏航误差", "deg", 12, 35, 10},
        {"yaw motor fault|yaw drive tripped|yaw motor overload",
         "偏航电机故障|偏航驱动跳闸|偏航电机过载", "motor current", "电机电流", "A", 18, 30, 16},
        {"cable twist limit reached|cable twist|untwist required", "扭缆到限|电缆扭缆|需要解缆",
         "cable twist", "扭缆圈数", "turns", 2.6f, 3.4f, 2.5f},
        {"yaw brake pressure low|yaw brake fault", "偏航刹车压力低|偏航刹车故障", "brake pressure",
         "刹车压力", "bar", 60, 120, 140}}},
      {"converter|power converter|inverter cabinet",
       "变流器|变频器|变流柜",
       "WTG-%02d|T%02d|WT%03d",
       "%d号风机|F%02d",
       "IGBT module|DC link capacitor|cooling pump|crowbar",
       "IGBT模块|直流母线电容|冷却水泵|撬棒",
       "CNV",
       {{"IGBT overtemperature|IGBT temp high|power module overheating",
         "IGBT超温|IGBT温度高|功率模块过热", "IGBT temp", "IGBT温度", "C", 96, 125, 95},
        {"DC link overvoltage|DC bus overvoltage|high DC voltage",
         "直流母线过压|直流过压|母线电压高", "DC link voltage", "直流电压", "V", 1150, 1300, 1100},
        {"grid fault ride through|grid voltage dip|low voltage ride through event",
         "电网低穿|电网电压跌落|低电压穿越", "grid voltage", "电网电压", "%", 20, 80, 85},
        {"coolant flow low|cooling water pressure low", "冷却液流量低|冷却水压力低", "coolant flow",
         "冷却流量", "l/min", 8, 14, 15}}},
      {"blade|rotor blade|blades",
       "叶片|风机叶片",
       "WTG-%02d|T%02d|WT%03d",
       "%d号风机|F%02d",
       "leading edge|lightning receptor|blade bearing|de-icing heater",
       "前缘|接闪器|叶片轴承|除冰加热器",
       "BLD",
       {{"ice on blades|blade icing|icing detected", "叶片结冰|覆冰|检测到结冰", "ice load",
         "覆冰量", "kg", 40, 300, 30},
        {"lightning strike detected|lightning event|lightning current registered",
         "雷击|检测到雷击|雷电流记录", "lightning current", "雷电流", "kA", 8, 60, 5},
        {"blade crack suspected|blade damage|acoustic emission high on blade",
         "疑似叶片裂纹|叶片损伤|叶片声发射异常", "acoustic level", "声发射", "dB", 70, 95, 65},
        {"blade imbalance|rotor imbalance|1P vibration high", "叶片不平衡|风轮不平衡|1P振动高",
         "1P amplitude", "1P幅值", "mm/s", 3, 9, 2.5f}}}}},

    {"Eastfield substation|Crane Hill solar park|Substation 7 Marsh Lane|Sunbelt PV plant",
     "500kV东郊变电站|青海格尔木光伏电站|110kV城南变|宁夏光伏园区",
     "ESUB|CHSP|SS07|SUNB",
     "main transformer explosion|transformer fire|busbar fault blacked out the whole "
     "substation|SF6 leak in the GIS hall|worker in contact with live equipment|fire in the "
     "inverter room",
     "主变爆炸|主变着火|母线故障导致全站失压|GIS室SF6泄漏|作业人员触电|逆变器室着火",
     "{mw} MW of generation lost|substation completely de-energised|grid frequency "
     "dropping|protection failed to clear the fault|ambulance called",
     "损失出力{mw}MW|全站失电|电网频率下降|保护拒动未切除故障|已呼叫救护车",
     {{"main transformer|power transformer|GSU transformer|transformer",
       "主变|主变压器|升压变",
       "TR%d|T-%d|MTR%d",
       "%d号主变|%d号变压器",
       "cooling fans|bushing|tap changer|silica gel breather",
       "冷却风扇|套管|有载调压开关|呼吸器",
       "TRF",
       {{"top oil temperature high|oil temp high|transformer running hot",
         "顶层油温高|油温过高|变压器过热", "top oil temp", "顶层油温", "C", 86, 105, 85},
        {"Buchholz relay alarm|gas relay alarm|gas accumulation",
         "瓦斯继电器告警|轻瓦斯动作|气体积聚", "gas volume", "气体量", "ml", 50, 300, 40},
        {"winding hot spot high|hot spot temperature alarm", "绕组热点温度高|热点温度告警",
         "hot spot temp", "热点温度", "C", 110, 135, 105},
        {"tap changer failure|OLTC stuck|tap position mismatch",
         "分接开关故障|有载调压卡涩|档位不一致", "tap position", "档位", "pos", 1, 17, 17}}},
      {"circuit breaker|breaker|CB|feeder breaker",
       "断路器|开关|馈线开关",
       "CB-%d|Q%d|QF%02d",
       "%d号断路器|%d号开关",
       "operating mechanism|trip coil|SF6 gas|auxiliary contacts",
       "操作机构|跳闸线圈|SF6气体|辅助触点",
       "CB",
       {{"breaker tripped|unexpected trip|CB trip", "断路器跳闸|开关跳闸|意外跳闸", "load current",
         "负荷电流", "A", 400, 1600, 1250},
        {"SF6 pressure low|low gas density|SF6 density alarm", "SF6压力低|气体密度低|SF6密度告警",
         "SF6 pressure", "SF6压力", "MPa", 0.48f, 0.55f, 0.55f},
        {"breaker failed to close|close command failed|failure to close",
         "合闸失败|合闸命令未执行|拒合", "spring charge", "储能", "%", 0, 40, 100},
        {"spring not charged|motor charging fault", "弹簧未储能|储能电机故障", "charge time",
         "储能时间", "s", 20, 60, 15}}},
      {"inverter|PV inverter|string inverter|central inverter",
       "逆变器|光伏逆变器|组串式逆变器",
       "INV-%02d|INV%03d|I%02d",
       "%d号逆变器|NB%02d",
       "DC fuse|cooling fan|AC contactor|IGBT stack",
       "直流熔丝|散热风扇|交流接触器|IGBT模块",
       "INV",
       {{"inverter fault|inverter tripped|inverter stopped", "逆变器故障|逆变器跳闸|逆变器停机",
         "output power", "输出功率", "kW", 0, 50, 100},
        {"isolation fault|low insulation on DC side|ground fault", "绝缘故障|直流侧绝缘低|接地故障",
         "insulation", "绝缘阻抗", "kohm", 20, 90, 100},
        {"DC overvoltage|PV input overvoltage", "直流过压|光伏输入过压", "DC voltage", "直流电压",
         "V", 1010, 1150, 1000},
        {"inverter overheating|heat sink temperature high|derating due to temperature",
         "逆变器过温|散热器温度高|过温降额", "heat sink temp", "散热器温度", "C", 76, 92, 75}}},
      {"PV string|string|solar array|combiner box",
       "光伏组串|组串|汇流箱|光伏阵列",
       "STR-%02d|S%03d|CB%02d",
       "%d号组串|%d号汇流箱",
       "connectors|string fuse|modules|bypass diodes",
       "连接器|组串熔丝|光伏组件|旁路二极管",
       "STR",
       {{"string current low|string underperforming|low string output",
         "组串电流低|组串发电量低|组串出力低", "string current", "组串电流", "A", 1, 5, 7},
        {"string ground fault|earth leakage on string", "组串接地故障|组串漏电", "leakage current",
         "漏电流", "mA", 40, 300, 30},
        {"combiner box temperature high|hot spot in combiner box", "汇流箱温度高|汇流箱热点",
         "box temp", "箱内温度", "C", 70, 95, 70},
        {"string fuse blown|open string", "组串熔丝熔断|组串开路", "string current", "组串电流",
         "A", 0, 0.3f, 5}}},
      {"protection relay|relay|IED|distance protection",
       "保护装置|继电保护|差动保护|测控装置",
       "REL-%02d|P%d|IED%02d",
       "%d号保护|%d号测控",
       "power supply card|CT circuit|trip output|GPS clock",
       "电源插件|CT回路|出口继电器|对时装置",
       "PRT",
       {{"relay self-check failure|IED internal fault|relay watchdog",
         "保护装置自检失败|装置内部故障|装置看门狗告警", "error count", "错误数", "count", 1, 12,
         1},
        {"differential protection operated|diff trip|87T operated",
         "差动保护动作|差动跳闸|主变差动动作", "diff current", "差流", "A", 0.4f, 3, 0.3f},
        {"CT circuit open|CT supervision alarm", "CT断线|CT回路告警", "unbalance", "不平衡度", "%",
         15, 60, 10},
        {"time sync lost|GPS clock alarm", "对时丢失|GPS时钟告警", "time offset", "时间偏差", "ms",
         50, 900, 10}}}}},

    {"DC2 Frankfurt|London LD5|Ashburn IAD3|Singapore SG1",
     "上海外高桥数据中心|北京亦庄机房|廊坊云计算中心|深圳前海IDC",
     "FRA2|LD5|IAD3|SG1",
     "fire alarm in data hall|smoke detected in the UPS room|all chillers tripped|water leak "
     "under the raised floor next to the racks|utility power lost and the generator failed to "
     "start|emergency power off button pressed",
     "数据机房火警|UPS室检测到烟雾|冷水机组全部跳机|机柜旁地板下漏水|市电中断且柴发未启动|"
     "紧急断电按钮被按下",
     "room temperature rising {rate} C per minute|racks are shutting down|{n} customers "
     "down|fuel left for {m} minutes|battery runtime {m} minutes",
     "机房温度每分钟上升{rate}度|机柜开始宕机|{n}个客户业务中断|燃油仅够{m}分钟|电池仅剩{m}分钟",
     {{"CRAC unit|CRAH|precision air conditioner|cooling unit",
       "精密空调|空调机组|列间空调|CRAC",
       "CRAC-%d|CRAH%02d|AC%02d",
       "%d号精密空调|CRAC-%d",
       "air filters|compressor|fan belt|humidifier",
       "过滤网|压缩机|风机皮带|加湿器",
       "AC",
       {{"supply air temperature high|return air too hot|high supply temp",
         "送风温度高|回风温度过高|送风超温", "supply air", "送风温度", "C", 27, 35, 27},
        {"compressor high pressure|HP lockout|high head pressure", "压缩机高压|高压锁定|排气压力高",
         "head pressure", "排气压力", "bar", 26, 32, 25},
        {"airflow loss|fan failure|low airflow", "风量丢失|风机故障|风量不足", "airflow", "风量",
         "%", 10, 60, 70},
        {"humidity out of range|humidity high|humidity low", "湿度超限|湿度过高|湿度过低",
         "humidity", "湿度", "%", 62, 80, 60}}},
      {"UPS|UPS system|uninterruptible power supply",
       "UPS|不间断电源|UPS系统",
       "UPS-%d|UPS%02d|UPS-%c",
       "%d号UPS|UPS-%d",
       "battery string|rectifier|static switch|capacitors",
       "电池组|整流器|静态开关|电容",
       "UPS",
       {{"UPS on battery|running on battery|mains failure, on battery",
         "UPS转电池供电|电池放电|市电失电", "runtime", "剩余时间", "min", 5, 25, 30},
        {"UPS overload|load above rating|output overload", "UPS过载|负载超额定|输出过载", "load",
         "负载率", "%", 92, 115, 90},
        {"UPS in bypass|static bypass active|transfer to bypass", "UPS旁路运行|静态旁路|切换至旁路",
         "load", "负载率", "%", 40, 85, 100},
        {"battery fault|battery temperature high|weak battery block",
         "电池故障|电池温度高|电池单体落后", "battery temp", "电池温度", "C", 31, 42, 30}}},
      {"chiller|chiller plant|cooling tower",
       "冷水机组|冷机|冷却塔",
       "CH-%d|CHL%02d|CT-%d",
       "%d号冷机|%d号冷却塔",
       "condenser tubes|compressor|water pump|expansion valve",
       "冷凝器管|压缩机|水泵|膨胀阀",
       "CHL",
       {{"chilled water temperature high|CHW supply temp high|warm chilled water",
         "冷冻水温度高|供水温度高|冷冻水超温", "CHW supply", "冷冻水供水温度", "C", 13, 19, 12},
        {"chiller trip|chiller stopped on fault|compressor trip",
         "冷机跳机|冷机故障停机|压缩机跳闸", "load", "负荷", "%", 0, 30, 100},
        {"condenser pressure high|high condensing pressure", "冷凝压力高|冷凝器高压",
         "condenser pressure", "冷凝压力", "kPa", 1100, 1500, 1050},
        {"low water flow|flow switch alarm", "水流量低|水流开关告警", "water flow", "水流量",
         "m3/h", 40, 90, 100}}},
      {"rack|PDU|power distribution unit|cabinet",
       "机柜|PDU|列头柜|配电柜",
       "R%02d-%02d|PDU-%d|A%02d",
       "%d号机柜|PDU-%d",
       "breaker|power strip|blanking panels|rear door fans",
       "空开|电源插排|盲板|后门风扇",
       "PDU",
       {{"rack inlet temperature high|hot spot at rack|inlet temp above ASHRAE range",
         "机柜进风温度高|机柜局部热点|进风温度超标", "inlet temp", "进风温度", "C", 28, 38, 27},
        {"PDU overload|phase current high|PDU load above threshold",
         "PDU过载|相电流高|PDU负载超阈值", "phase current", "相电流", "A", 26, 34, 24},
        {"breaker tripped in PDU|branch circuit trip", "PDU空开跳闸|支路跳闸", "branch load",
         "支路负载", "A", 14, 20, 16},
        {"door open alarm|rack door open", "机柜门开告警|柜门未关", "open time", "开门时长", "min",
         10, 90, 5}}},
      {"diesel generator|genset|standby generator",
       "柴油发电机|柴发|备用发电机",
       "GEN-%d|DG%02d|G%d",
       "%d号柴发|DG-%d",
       "fuel filter|starter battery|coolant pump|day tank",
       "燃油滤清器|启动电池|冷却水泵|日用油箱",
       "DG",
       {{"generator failed to start|start failure|crank fail", "柴发启动失败|启动失败|盘车失败",
         "start attempts", "启动次数", "count", 3, 3, 3},
        {"fuel level low|day tank low|low fuel", "燃油液位低|日用油箱低|油量不足", "fuel level",
         "油位", "%", 8, 25, 30},
        {"coolant temperature high|engine overheating", "冷却液温度高|发动机过热", "coolant temp",
         "冷却液温度", "C", 96, 110, 95},
        {"starter battery voltage low|battery charger fault", "启动电池电压低|充电器故障",
         "battery voltage", "电池电压", "V", 21, 23.5f, 24}}},
      {"leak detection|water leak sensor|leak cable",
       "漏水检测|漏水感应线|漏水传感器",
       "LD-%02d|LEAK%d|WL-%d",
       "%d号漏水检测|LD-%02d",
       "sensing cable|drain pan|valve|pipe joint",
       "感应线缆|接水盘|阀门|管道接头",
       "LD",
       {{"water leak detected|leak alarm|moisture detected", "检测到漏水|漏水告警|检测到水浸",
         "leak distance", "漏点位置", "m", 2, 60, 0},
        {"leak cable fault|sensor cable break", "感应线断线|漏水线缆故障", "resistance", "电阻",
         "kohm", 900, 2000, 800},
        {"condensate overflow|drain pan full", "冷凝水溢出|接水盘满", "level", "液位", "%", 80, 100,
         75},
        {"pipe pressure drop|chilled water pipe leak suspected", "管道压力下降|疑似冷冻水管泄漏",
         "pipe pressure", "管道压力", "bar", 1.5f, 2.6f, 3}}}}},

    {"HQ campus network|core DC network|branch WAN|Zone B backbone",
     "总部园区网|数据中心核心网|分支广域网|B区骨干网",
     "HQN|CORE|WAN|ZB",
     "core router down|both data centre uplinks lost|BGP sessions to all transit providers "
     "dropped|DDoS attack saturating the internet links|both firewall cluster nodes down",
     "核心路由器宕机|数据中心两条上联全部中断|与所有运营商的BGP会话中断|DDoS攻击打满互联网出口|"
     "防火墙集群双机故障",
     "all sites unreachable|customer traffic is being dropped|payment systems offline|{n} "
     "branches offline|trading floor has no connectivity",
     "所有站点不可达|客户流量被丢弃|支付系统离线|{n}个分支机构断网|交易大厅网络中断",
     {{"switch|access switch|core switch|ToR switch",
       "交换机|接入交换机|核心交换机|柜顶交换机",
       "sw-%02d|SW%03d|tor-%02d|core-sw-%d",
       "%d号交换机|SW-%d",
       "transceiver|supervisor card|fan tray|power supply",
       "光模块|主控板|风扇框|电源模块",
       "SW",
       {{"interface down|port down|link down on uplink", "端口down|接口中断|上联链路中断",
         "down ports", "中断端口数", "count", 1, 8, 0},
        {"CRC errors increasing|input errors|FCS errors on port",
         "CRC错误增多|入方向错包|端口FCS错误", "CRC errors", "CRC错误", "count", 500, 90000, 100},
        {"port flapping|link flap|interface bouncing", "端口抖动|链路震荡|接口反复up/down", "flaps",
         "抖动次数", "count", 5, 60, 3},
        {"high CPU|control plane CPU high|CPU utilisation above threshold",
         "CPU过高|控制平面CPU高|CPU利用率超阈值", "CPU", "CPU", "%", 86, 100, 85}}},
      {"router|edge router|WAN router|border router",
       "路由器|边界路由器|广域网路由器|出口路由器",
       "rtr-%02d|R%d|edge-%02d|br-%d",
       "%d号路由器|R-%d",
       "line card|route processor|optics|power supply",
       "线卡|主控引擎|光模块|电源",
       "RTR",
       {{"BGP peer down|BGP session dropped|neighbor state changed to idle",
         "BGP邻居中断|BGP会话断开|邻居状态变为idle", "prefixes", "路由条目", "count", 0, 10,
         800000},
        {"packet loss|high packet loss|loss on path", "丢包|严重丢包|链路丢包", "loss", "丢包率",
         "%", 3, 40, 1},
        {"latency high|RTT above threshold|slow path", "时延高|RTT超阈值|链路延迟大", "RTT", "时延",
         "ms", 120, 900, 80},
        {"OSPF adjacency lost|routing protocol flap", "OSPF邻接丢失|路由协议震荡", "adjacencies",
         "邻接数", "count", 0, 2, 4}}},
      {"firewall|FW cluster|next-gen firewall",
       "防火墙|防火墙集群|下一代防火墙",
       "fw-%02d|FW%d|ngfw-%d",
       "%d号防火墙|FW-%d",
       "session table|HA link|license|threat signatures",
       "会话表|HA心跳线|授权|特征库",
       "FW",
       {{"session table full|session limit reached|conn table exhausted",
         "会话表满|会话数达上限|连接表耗尽", "sessions", "会话使用率", "%", 92, 100, 90},
        {"HA failover|cluster failover|active unit changed", "HA切换|集群主备切换|主用设备变更",
         "failovers", "切换次数", "count", 1, 6, 0},
        {"VPN tunnel down|IPsec tunnel flapping|site-to-site VPN lost",
         "VPN隧道中断|IPsec隧道抖动|站点VPN断开", "tunnels down", "中断隧道", "count", 1, 12, 0},
        {"threat detected|IPS blocked attack|malware signature match",
         "检测到威胁|IPS拦截攻击|命中恶意特征", "events", "事件数", "count", 10, 4000, 1}}},
      {"optical link|fibre link|transceiver|DWDM channel",
       "光链路|光纤链路|光模块|波分通道",
       "et-%d/%d|xe-%d/%d|Te%d/%d",
       "%d号光链路|%d号波道",
       "patch cord|SFP|amplifier|connector",
       "跳纤|SFP模块|放大器|法兰",
       "OPT",
       {{"rx power low|low optical receive level|light level degraded",
         "收光功率低|接收光功率过低|光功率劣化", "rx power", "收光功率", "dBm", -30, -20, -18},
        {"link down|loss of signal|LOS alarm", "链路中断|信号丢失|LOS告警", "down time", "中断时长",
         "s", 5, 600, 0},
        {"FEC errors rising|pre-FEC BER high", "FEC纠错增多|纠前误码高", "BER", "误码率", "e-6", 2,
         90, 1},
        {"transceiver temperature high|SFP overheating", "光模块温度高|光模块过热", "module temp",
         "模块温度", "C", 71, 85, 70}}},
      {"load balancer|LB|ADC|reverse proxy",
       "负载均衡|负载均衡器|反向代理",
       "lb-%02d|LB%d|adc-%d",
       "%d号负载均衡|LB-%d",
       "pool|health monitor|certificate|virtual server",
       "资源池|健康检查|证书|虚拟服务",
       "LB",
       {{"pool member down|backend marked down|server out of rotation",
         "池成员down|后端被标记为不可用|服务器下线", "members down", "不可用成员", "count", 1, 6,
         0},
        {"health check failing|monitor timeout", "健康检查失败|健康检查超时", "failed checks",
         "失败次数", "count", 3, 40, 2},
        {"connection rate spike|new connections above limit", "新建连接突增|新建连接超限", "conn/s",
         "新建连接", "count", 20000, 90000, 15000},
        {"SSL handshake failures|TLS errors on VIP", "SSL握手失败|VIP上TLS错误", "failures",
         "失败数", "count", 50, 3000, 20}}}}},

    {"payments platform|checkout service|prod cluster eu-west|customer portal",
     "支付平台|结算服务|生产集群华东|客户门户",
     "PAY|CHK|EUW|PORTAL",
     "production database corrupted|ransomware detected on the file servers|customer data "
     "exposed publicly|complete outage of the checkout service|primary storage and backups both "
     "failed",
     "生产数据库损坏|文件服务器发现勒索病毒|客户数据被公开泄露|结算服务全面中断|"
     "主存储和备份同时失效",
     "all users affected|possible data loss|the regulator must be told within 72 hours|revenue "
     "loss every minute|{n} enterprise customers impacted",
     "全部用户受影响|可能丢失数据|需在72小时内报告监管|每分钟都在损失收入|{n}家企业客户受影响",
     {{"database|postgres primary|MySQL replica|DB cluster",
       "数据库|主库|从库|数据库集群",
       "db-%02d|pg-%d|mysql-%02d",
       "%d号数据库|db-%02d",
       "WAL volume|replication slot|index|connection pool",
       "WAL卷|复制槽|索引|连接池",
       "DB",
       {{"replication lag high|replica behind primary|replication delay",
         "主从延迟高|从库落后|复制延迟", "replication lag", "复制延迟", "s", 30, 900, 10},
        {"connection pool exhausted|too many connections|max connections reached",
         "连接池耗尽|连接数过多|达到最大连接数", "connections", "连接数", "count", 480, 500, 450},
        {"slow queries|query latency high|long running queries", "慢查询|查询延迟高|长事务",
         "p95 query time", "查询耗时", "ms", 800, 9000, 500},
        {"deadlocks detected|lock waits increasing", "出现死锁|锁等待增多", "deadlocks", "死锁数",
         "count", 5, 80, 1}}},
      {"server|host|VM|node",
       "服务器|主机|虚拟机|节点",
       "srv-%03d|host%02d|vm-%04d|node-%d",
       "%d号服务器|srv-%03d",
       "disk|memory module|power supply|RAID controller",
       "磁盘|内存条|电源|RAID卡",
       "HOST",
       {{"disk usage high|filesystem almost full|disk space low",
         "磁盘使用率高|文件系统快满|磁盘空间不足", "disk usage", "磁盘使用率", "%", 90, 99, 85},
        {"memory usage high|memory pressure|swap usage high", "内存使用率高|内存压力大|swap使用高",
         "memory", "内存使用率", "%", 91, 99, 90},
        {"CPU saturated|load average high|CPU steal high", "CPU打满|负载过高|CPU争抢严重", "load",
         "负载", "count", 24, 90, 16},
        {"host unreachable|ping failed|node not responding", "主机不可达|ping不通|节点无响应",
         "missed pings", "丢失心跳", "count", 3, 30, 2}}},
      {"service|pod|deployment|microservice",
       "服务|Pod|应用|微服务",
       "api-%d|svc-%02d|orders-%d",
       "%d号服务|api-%d",
       "container image|config map|HPA settings|sidecar",
       "容器镜像|配置文件|扩缩容配置|sidecar",
       "APP",
       {{"pod crashlooping|container restarts|CrashLoopBackOff",
         "Pod反复重启|容器重启|CrashLoopBackOff", "restarts", "重启次数", "count", 5, 120, 3},
        {"error rate high|5xx rate above SLO|HTTP 500s increasing",
         "错误率高|5xx超过SLO|HTTP 500增多", "error rate", "错误率", "%", 2, 30, 1},
        {"p99 latency high|slow responses|latency SLO breach", "P99延迟高|响应变慢|延迟超SLO",
         "p99 latency", "P99延迟", "ms", 900, 8000, 500},
        {"OOMKilled|out of memory kill|memory limit hit", "OOMKilled|内存溢出被杀|触达内存上限",
         "memory", "内存", "%", 98, 100, 95}}},
      {"message queue|Kafka topic|RabbitMQ queue|consumer group",
       "消息队列|Kafka主题|消费组|MQ队列",
       "mq-%d|topic-%02d|cg-%d",
       "%d号消息队列|mq-%d",
       "partitions|consumers|disk|retention settings",
       "分区|消费者|磁盘|保留策略",
       "MQ",
       {{"consumer lag high|lag growing|consumers falling behind",
         "消费延迟高|积压增长|消费者跟不上", "lag", "积压", "count", 50000, 900000, 10000},
        {"queue depth high|messages piling up", "队列深度高|消息堆积", "depth", "队列深度", "count",
         20000, 500000, 10000},
        {"broker disk usage high|log dir almost full", "Broker磁盘使用率高|日志目录快满",
         "disk usage", "磁盘使用率", "%", 85, 97, 80},
        {"under-replicated partitions|ISR shrink", "分区副本不足|ISR收缩", "partitions", "分区数",
         "count", 2, 60, 0}}},
      {"backup job|nightly backup|snapshot job",
       "备份任务|夜间备份|快照任务",
       "bk-%02d|job%d|snap-%d",
       "%d号备份任务|bk-%02d",
       "backup target|tape library|retention policy|agent",
       "备份目标|磁带库|保留策略|备份代理",
       "BKP",
       {{"backup failed|job ended with errors|backup did not complete",
         "备份失败|任务报错结束|备份未完成", "failed objects", "失败对象", "count", 1, 400, 0},
        {"backup running too long|job exceeded window", "备份耗时过长|任务超出窗口", "duration",
         "耗时", "min", 300, 900, 240},
        {"backup storage almost full|repository full", "备份存储快满|存储库已满", "usage", "使用率",
         "%", 88, 99, 85},
        {"snapshot missing|no snapshot for 2 days", "缺少快照|两天没有快照", "age", "快照间隔", "h",
         30, 72, 24}}},
      {"certificate|TLS certificate|API gateway",
       "证书|TLS证书|API网关",
       "cert-%d|gw-%02d|api-gw-%d",
       "%d号证书|gw-%02d",
       "certificate chain|private key|rate limit policy|ACME client",
       "证书链|私钥|限流策略|自动续期客户端",
       "CRT",
       {{"certificate expires soon|cert expiry warning|TLS cert about to expire",
         "证书即将过期|证书到期预警|TLS证书快到期", "days left", "剩余天数", "d", 1, 14, 30},
        {"TLS handshake errors|certificate chain invalid", "TLS握手错误|证书链无效", "errors",
         "错误数", "count", 30, 3000, 10},
        {"rate limit exceeded|429 responses high", "触发限流|429响应增多", "throttled",
         "被限流请求", "count", 500, 50000, 100},
        {"gateway 502 errors|upstream unavailable", "网关502错误|上游不可用", "502 rate", "502比例",
         "%", 2, 40, 1}}}}},

    {"equities desk London|FX surveillance|futures trading floor|fixed income desk",
     "上海股票交易部|外汇监控组|期货交易台|固收交易部",
     "EQL|FXS|FUT|FIC",
     "confirmed spoofing by a desk trader|evidence of insider trading in chat logs|position "
     "limit breached by {pct}%|rogue algorithm sending orders without control|market abuse "
     "confirmed by second line",
     "确认交易员存在幌骗行为|聊天记录中发现内幕交易证据|持仓超限{pct}%|异常算法失控下单|"
     "二线确认存在市场滥用",
     "regulator must be notified|trading must be halted|potential fine and licence "
     "risk|client orders at risk|board must be informed",
     "需要向监管报告|必须暂停交易|可能面临罚款和牌照风险|客户订单面临风险|需要通报董事会",
     {{"surveillance engine|trade surveillance|market abuse monitor",
       "交易监控系统|异常交易监控|市场滥用监测",
       "SURV-%d|MAR%02d|rule %d",
       "%d号监控规则|规则%d",
       "alert thresholds|rule set|lexicon|reference data",
       "预警阈值|规则集|关键词库|参考数据",
       "SRV",
       {{"spoofing alert|layering pattern|cancelled orders pattern",
         "幌骗预警|分层挂单模式|频繁撤单模式", "alert score", "预警分数", "score", 0.7f, 0.99f,
         0.6f},
        {"wash trade alert|self-trade detected|matched own orders", "对敲预警|自成交|自买自卖",
         "matched volume", "成交量", "count", 500, 90000, 100},
        {"insider trading pattern|trading ahead of news|suspicious pre-announcement trades",
         "内幕交易模式|消息公布前交易|公告前可疑交易", "alert score", "预警分数", "score", 0.7f,
         0.99f, 0.6f},
        {"marking the close alert|end of day price push", "尾盘拉抬预警|收盘价操纵", "price move",
         "价格变动", "%", 1, 6, 0.8f}}},
      {"order gateway|FIX gateway|exchange connection",
       "报单网关|FIX网关|交易所连接",
       "OGW-%d|FIX%02d|GW%d",
       "%d号报单网关|FIX-%02d",
       "session settings|throttle|sequence store|certificate",
       "会话配置|流控|序号存储|证书",
       "OGW",
       {{"order reject rate high|exchange rejects increasing", "废单率高|交易所拒单增多",
         "reject rate", "拒单率", "%", 3, 30, 2},
        {"order latency spike|gateway slow", "报单延迟突增|网关变慢", "latency", "延迟", "ms", 40,
         900, 20},
        {"FIX session dropped|logon failed|sequence gap", "FIX会话断开|登录失败|序号缺口",
         "disconnects", "断开次数", "count", 1, 20, 0},
        {"kill switch near threshold|order rate limit", "熔断开关接近阈值|报单速率限制",
         "order rate", "报单速率", "count", 800, 5000, 600}}},
      {"market data feed|price feed|ticker plant",
       "行情源|行情通道|报价系统",
       "MD-%d|FEED%02d|TP%d",
       "%d号行情源|MD-%d",
       "multicast line|feed handler|normaliser|cache",
       "组播线路|行情处理器|标准化模块|缓存",
       "MDF",
       {{"feed stale|no ticks|prices not updating", "行情停滞|没有tick|价格不更新", "staleness",
         "停滞时间", "s", 5, 300, 2},
        {"gap in market data|sequence gap|packet loss on feed", "行情数据缺口|序号缺口|行情丢包",
         "gaps", "缺口数", "count", 3, 500, 0},
        {"feed latency high|slow market data", "行情延迟高|行情慢", "latency", "延迟", "ms", 20,
         400, 10},
        {"price spike|bad tick|off-market price", "价格尖刺|错误报价|偏离市场价", "deviation",
         "偏离", "%", 3, 25, 2}}},
      {"risk limits|position limit|credit limit",
       "风险限额|持仓限额|授信额度",
       "LIM-%d|desk %d|book %d",
       "%d号限额|账簿%d",
       "limit configuration|pre-trade checks|exposure report|hedge",
       "限额配置|事前风控|敞口报表|对冲头寸",
       "LIM",
       {{"position limit usage high|limit utilisation above warning",
         "持仓限额使用率高|限额使用超预警", "utilisation", "使用率", "%", 85, 99, 80},
        {"credit limit usage high|counterparty exposure high", "授信使用率高|对手方敞口高",
         "utilisation", "使用率", "%", 85, 99, 80},
        {"VaR above appetite|risk above limit", "VaR超出风险偏好|风险值超限", "VaR usage",
         "VaR使用率", "%", 95, 130, 100},
        {"unhedged exposure|hedge mismatch", "未对冲敞口|对冲不匹配", "exposure", "敞口", "m", 5,
         80, 3}}}}},
};

#define N_DOMAINS (sizeof domains / sizeof domains[0])

/* Each label's texts join a head (the situation, with the equipment, values and
 * identifiers) and a cue (what is asked or said about it; "" for none) in either order.
 * The pair (head i, cue j) is test-only when (i + j) % 4 == 3: every head and every cue
 * occurs in training, but a quarter of their combinations, in both languages, only in
 * the test split. */
#define MAX_PARTS 10

typedef struct {
    const char *name;
    double cue_first; /* how often the cue opens the text */
    const char *head_en[MAX_PARTS], *cue_en[MAX_PARTS];
    const char *head_zh[MAX_PARTS], *cue_zh[MAX_PARTS];
} Label;

static const Label labels[] = {
    {"triage",
     0.2,
     {"{id} {eq} {fault}: {meas} {val}, limit {lim}", "{eq} {id} reports {fault} ({meas} {val})",
      "new alarm at {site}: {id} {fault}", "{meas} on {id} reading {val} against a limit of {lim}",
      "{site} {id}: {fault} since {time}", "ALARM {code} {id} {eq} {fault}",
      "{fault} detected on {eq} {id}, {meas} {val}", "{id} raised {fault} at {time}"},
     {"", "what should we check first?", "how urgent is this?", "please assess severity",
      "is this serious?", "first time we see this", "no other alarms on site",
      "need a quick assessment", "what does this mean?"},
     {"{id}{eq}{fault}，{meas}{val}，限值{lim}", "{site}{id}报{fault}，{meas}当前{val}",
      "新告警：{id}{eq}{fault}", "告警{code}：{eq}{id}{fault}", "{time}起{id}{fault}，{meas}{val}",
      "{eq}{id}出现{fault}"},
     {"", "请判断严重程度", "先查什么？", "需要评估", "首次出现", "严重吗？"}},
    {"root-cause",
     0.25,
     {"{id} tripped {n} times in {h}h on {fault}",
      "{fault} keeps coming back on {id} after every reset",
      "same {fault} on {id}, {id2} and {id3} since {ts}",
      "{n} occurrences of {fault} on {id} this week",
      "recurring {fault} on {eq} {id}: {n} events in {h} hours",
      "intermittent {fault} on {id}, always around {time}",
      "{n} units at {site} showed {fault} within {m} minutes of each other",
      "{fault} again on {id}, third time since the last repair",
      "{id} {fault} reoccurring ({n} times in {d} days) even after replacing the {part}"},
     {"", "why does this keep happening?", "need root cause", "what is the common cause?",
      "resets don't hold", "looking for the underlying cause", "please analyse the pattern",
      "what is really going on?"},
     {"{id}{h}小时内因{fault}跳闸{n}次", "{id}复位后{fault}反复出现",
      "{id}、{id2}、{id3}自{ts}起均报{fault}", "{eq}{id}{fault}频繁发生，{h}小时{n}次",
      "{id}间歇性{fault}，每次都在{time}左右", "更换{part}后{id}仍然{fault}，{d}天内{n}次"},
     {"", "为什么总是这样？", "请分析根本原因", "共同原因是什么", "复位无效", "请找出规律"}},
    {"runbook",
     0.2,
     {"how do I reset {fault} on {id}", "procedure for replacing the {part} on {eq} {id}",
      "steps to clear alarm {code} on {eq}", "checklist for restarting {eq} {id} after {fault}",
      "work instruction for {fault} on {eq}", "{id} shows {code} {fault}, which SOP applies",
      "how to isolate {eq} {id} for {part} replacement",
      "correct sequence to acknowledge and reset {code} on {id}"},
     {"", "step by step please", "what are the steps?", "send me the procedure",
      "as per the manual", "lockout/tagout included", "for the night crew", "?"},
     {"{id}{fault}怎么复位", "{eq}{id}更换{part}的操作步骤", "{eq}告警{code}如何清除",
      "{fault}后{eq}{id}重新启动的检查清单", "处理{eq}{fault}的作业指导书",
      "隔离{eq}{id}更换{part}的标准流程"},
     {"", "请给出步骤", "按哪个规程处理", "需要详细流程", "发一下操作手册", "？"}},
    {"escalate",
     0.2,
     {"{severe} at {site} {id}", "CRITICAL: {severe} on {eq} {id}",
      "{severe} reported by field crew at {site}", "P1 incident: {severe} at {site}",
      "{severe} confirmed on {eq} {id}", "emergency at {site}: {severe}", "{id}: {severe}",
      "major event: {severe}"},
     {"{impact}", "{impact}, call the on-call lead now", "{impact}, escalate immediately",
      "{impact}, need management decision", "safety team informed?",
      "site manager must be notified", "{impact}, customers affected", "wake up the duty manager"},
     {"紧急：{site}{id}{severe}", "{eq}{id}{severe}", "重大事件：{site}{severe}",
      "P1事件：{site}{severe}", "现场人员报告{site}{severe}", "{id}{severe}"},
     {"{impact}", "{impact}，请立即上报", "{impact}，马上通知值班负责人", "{impact}，需要领导决策",
      "请立即升级处理", "通知安全负责人"}},
    {"ignore-noise",
     0.3,
     {"TEST ALARM from {host}", "heartbeat ok {host} {ts}",
      "{id} {meas} alarm raised and cleared within {s}s",
      "{id} in maintenance mode, {fault} suppressed", "info: {eq} {id} daily self-test passed",
      "duplicate of ALM#{num}: {id} {fault}", "sensor comm timeout {tag}, auto-recovered",
      "simulated {fault} on {id} for operator training", "{id} {fault} during commissioning test"},
     {"", "please ignore", "no action needed", "expected", "flapping, {n}x in {m} min",
      "informational only", "known noise", "suppress"},
     {"测试告警（{host}）", "心跳正常 {host} {ts}", "{id}{meas}告警{s}秒内自动恢复",
      "{id}处于检修模式，{fault}告警已屏蔽", "信息：{eq}{id}每日自检通过",
      "重复告警，同ALM#{num}：{id}{fault}", "通讯超时{tag}，已自动恢复"},
     {"", "请忽略", "无需处理", "属预期现象", "抖动{n}次", "仅供参考"}},
    {"maintenance",
     0.2,
     {"{meas} on {id} trending up {pct}% over the last {d} days",
      "{part} wear on {eq} {id} at {pct}% of limit", "{eq} {id} running hours {hours}",
      "slow rise in {meas} on {id}: {val} now vs {val2} a month ago",
      "condition monitoring shows the {part} of {id} degrading",
      "predictive model flags {id} {part}, remaining life about {d} days",
      "{id} {meas} drifting, still below {lim}",
      "{eq} {id} efficiency down {pct}% since the last service"},
     {"", "plan replacement", "service due",
      "schedule an inspection at the next maintenance window", "getting worse every week",
      "no alarm yet", "add to the maintenance plan", "order spare parts"},
     {"{id}{meas}近{d}天上升{pct}%", "{eq}{id}{part}磨损已达限值的{pct}%",
      "{eq}{id}运行{hours}小时", "{id}{meas}缓慢升高，现在{val}，一个月前{val2}",
      "预测模型显示{id}{part}性能下降，剩余寿命约{d}天", "{id}{meas}逐周劣化，尚未超过{lim}"},
     {"", "需安排更换", "到了保养周期", "下次检修窗口安排检查", "请列入检修计划", "提前备件"}},
    {"recovery",
     0.2,
     {"{id} {fault} cleared at {time}", "{eq} {id} restarted and running normally",
      "{fault} on {id} resolved, {meas} now {val}", "RTN: {id} {fault}",
      "{site} {id} back in service after {fault}", "alarm {code} on {id} returned to normal",
      "{id} online again since {time}, {meas} stable at {val}", "fault reset successful on {id}"},
     {"", "please confirm and close the ticket", "no further action from field", "verify and close",
      "all clear", "incident can be closed", "back to normal", "monitoring for now"},
     {"{id}{fault}已消除", "{eq}{id}已重启，运行正常", "{id}{fault}已处理，{meas}现为{val}",
      "告警{code}恢复：{id}", "{site}{id}{fault}后已恢复运行",
      "{id}自{time}起重新上线，{meas}稳定在{val}"},
     {"", "请确认并关闭工单", "无需现场处理", "已恢复正常", "事件可以关闭", "继续观察"}},
    {"summary",
     0.8,
     {"the night shift at {site}", "{site}, last {h}h: {n} alarms, {n2} trips",
      "incidents at {site} this week", "shift log: {id} {fault}; {id2} {fault2}; {id3} {fault3}",
      "open alarms at {site}", "{n} events at {site} today, including {fault} on {id}",
      "{site} last {h} hours", "everything that tripped at {site} since {ts}"},
     {"summarise", "handover report:", "give me a summary of", "write the report for",
      "overview of", "daily report:", "recap for management:", "compile a list:"},
     {"{site}夜班的告警情况", "{site}最近{h}小时共{n}条告警，{n2}次跳闸", "{site}本周事件",
      "{id}{fault}；{id2}{fault2}", "{site}当前未关闭告警", "{site}本月可利用率和告警统计"},
     {"总结", "交接班报告：", "请汇总", "写值班日志：", "日报：", "为早会准备汇总："}},
};

#define N_LABELS (sizeof labels / sizeof labels[0])

static const char *const hosts[] = {"scada01",        "opc-gw-2",    "nms-core",     "zbx-proxy-03",
                                    "prometheus-1",   "mon01.dc2",   "pi-collector", "hist-srv-4",
                                    "alertmanager-0", "icinga-sat-2"};

static const char *const severities[] = {"CRITICAL", "MAJOR", "MINOR", "WARNING", "INFO",
                                         "crit",     "warn",  "P1",    "P2",      "P3"};

/* --- output buffer --- */

#define TEXT_MAX 2048

typedef struct {
    char s[TEXT_MAX];
    size_t n;
} Buf;

static void put(Buf *b, const char *s, size_t n) {
    if (b->n + n >= TEXT_MAX) n = TEXT_MAX - 1 - b->n;
    memcpy(b->s + b->n, s, n);
    b->n += n;
    b->s[b->n] = '\0';
}

static void puts_(Buf *b, const char *s) {
    put(b, s, strlen(s));
}

static void putf(Buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void putf(Buf *b, const char *fmt, ...) {
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n > 0) put(b, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

/* --- choosing --- */

typedef struct {
    Rng rng;
    bool test; /* the test split: held-out frames and synonyms */
} Gen;

static int below(Gen *g, int n) {
    return (int)rng_below(&g->rng, (uint32_t)n);
}

static double uniform(Gen *g) {
    return rng_uniform(&g->rng);
}

static int count_variants(const char *list) {
    int n = 1;
    for (const char *p = list; *p; p++) n += *p == '|';
    return n;
}

/* A variant of a '|' list into b. The training split never uses the last variant of a
 * list of three or more; the test split takes it half of the time. */
static void variant(Gen *g, Buf *b, const char *list) {
    int n = count_variants(list), k;

    if (n >= 3 && !g->test)
        k = below(g, n - 1);
    else if (n >= 3 && uniform(g) < 0.5)
        k = n - 1;
    else
        k = below(g, n);
    const char *p = list;
    for (int i = 0; i < k; i++) p = strchr(p, '|') + 1;
    const char *end = strchr(p, '|');
    put(b, p, end ? (size_t)(end - p) : strlen(p));
}

/* --- one text --- */

typedef struct {
    const Domain *dom;
    const Equip *eq;
    const Fault *fault, *fault2, *fault3;
    bool zh;
    int idn[3];   /* identifier numbers */
    char idf[64]; /* the identifier format chosen */
} Ctx;

static void pick_format(Gen *g, Ctx *c) {
    Buf b = {.n = 0};
    variant(g, &b, c->zh && uniform(g) < 0.7 ? c->eq->id_zh : c->eq->id_en);
    size_t n = b.n < sizeof c->idf - 1 ? b.n : sizeof c->idf - 1;
    memcpy(c->idf, b.s, n);
    c->idf[n] = '\0';
}

/* An identifier from the chosen format (the tables' own printf formats: one %d, a
 * rack or port pair of two, or a letter). */
static void put_id(Buf *b, const Ctx *c, int which) {
    int a = c->idn[which], n = 0;

    for (const char *p = c->idf; (p = strchr(p, '%')); p++) n++;
    if (strstr(c->idf, "%c"))
        putf(b, c->idf, 'A' + a % 4);
    else if (n >= 2)
        putf(b, c->idf, 1 + a % 4, a);
    else
        putf(b, c->idf, a);
}

/* A value with its unit, in one of the ways consoles write it. */
static void put_value(Gen *g, Buf *b, const Fault *f, float v, bool zh) {
    const char *u = f->unit;
    bool frac = f->hi - f->lo < 10.0f || strcmp(u, "bar") == 0 || strcmp(u, "MPa") == 0;

    if (frac)
        putf(b, "%.*f", strcmp(u, "MPa") == 0 || strcmp(u, "score") == 0 ? 2 : 1, (double)v);
    else
        putf(b, "%d", (int)(v + 0.5f));
    if (strcmp(u, "C") == 0) {
        static const char *const en[] = {"C", " °C", "℃", " degC", " deg C", "°C"};
        static const char *const zhu[] = {"℃", "度", "°C"};
        puts_(b, zh ? zhu[below(g, 3)] : en[below(g, 6)]);
    } else if (strcmp(u, "count") == 0 || strcmp(u, "score") == 0 || strcmp(u, "pos") == 0) {
        return;
    } else if (strcmp(u, "%") == 0) {
        puts_(b, "%");
    } else {
        puts_(b, uniform(g) < 0.5 ? " " : "");
        puts_(b, u);
    }
}

static float draw(Gen *g, float lo, float hi) {
    return lo + (float)uniform(g) * (hi - lo);
}

static void put_ts(Gen *g, Buf *b) {
    int mo = 1 + below(g, 12), d = 1 + below(g, 28), h = below(g, 24), mi = below(g, 60);
    int s = below(g, 60);
    switch (below(g, 4)) {
    case 0: putf(b, "2024-%02d-%02d %02d:%02d:%02d", mo, d, h, mi, s); break;
    case 1: putf(b, "2024-%02d-%02dT%02d:%02d:%02dZ", mo, d, h, mi, s); break;
    case 2: putf(b, "%02d/%02d %02d:%02d", d, mo, h, mi); break;
    default: putf(b, "%02d:%02d", h, mi); break;
    }
}

static void put_tag(Gen *g, Buf *b, const Ctx *c) {
    Buf site = {.n = 0};
    variant(g, &site, c->dom->site_code);
    putf(b, "%s.%s%02d.%s_%d", site.s, c->eq->code, c->idn[0], c->eq->code, below(g, 40));
}

/* Expands a domain phrase that may itself hold {mw}, {n}, {m}, {rate}, {pct}. */
static void put_phrase(Gen *g, Buf *b, const char *list) {
    Buf tmp = {.n = 0};
    variant(g, &tmp, list);
    for (const char *p = tmp.s; *p;) {
        if (*p != '{') {
            put(b, p++, 1);
            continue;
        }
        const char *end = strchr(p, '}');
        if (!strncmp(p, "{mw}", 4))
            putf(b, "%d", 20 + below(g, 400));
        else if (!strncmp(p, "{n}", 3))
            putf(b, "%d", 3 + below(g, 60));
        else if (!strncmp(p, "{m}", 3))
            putf(b, "%d", 4 + below(g, 40));
        else if (!strncmp(p, "{rate}", 6))
            putf(b, "%.1f", 0.5 + uniform(g) * 2);
        else if (!strncmp(p, "{pct}", 5))
            putf(b, "%d", 5 + below(g, 60));
        p = end ? end + 1 : p + 1;
    }
}

/* One placeholder of a frame. */
static void put_key(Gen *g, Buf *b, const Ctx *c, const char *key, size_t n) {
#define IS(k) (n == sizeof k - 1 && !strncmp(key, k, n))
    bool zh = c->zh;
    const Fault *f = c->fault;
    if (IS("eq"))
        variant(g, b, zh ? c->eq->zh : c->eq->en);
    else if (IS("id"))
        put_id(b, c, 0);
    else if (IS("id2"))
        put_id(b, c, 1);
    else if (IS("id3"))
        put_id(b, c, 2);
    else if (IS("fault"))
        variant(g, b, zh ? f->zh : f->en);
    else if (IS("fault2"))
        variant(g, b, zh ? c->fault2->zh : c->fault2->en);
    else if (IS("fault3"))
        variant(g, b, zh ? c->fault3->zh : c->fault3->en);
    else if (IS("meas"))
        variant(g, b, zh ? f->meas_zh : f->meas_en);
    else if (IS("val"))
        put_value(g, b, f, draw(g, f->lo, f->hi), zh);
    else if (IS("val2"))
        put_value(g, b, f, f->lo > 0 ? f->lo * draw(g, 0.6f, 0.9f) : f->lo * 1.2f, zh);
    else if (IS("lim"))
        put_value(g, b, f, f->lim, zh);
    else if (IS("site"))
        variant(g, b, zh ? c->dom->site_zh : c->dom->site_en);
    else if (IS("part"))
        variant(g, b, zh ? c->eq->part_zh : c->eq->part_en);
    else if (IS("code"))
        putf(b, "%s-%s%03d", c->eq->code, uniform(g) < 0.5 ? "E" : "A", below(g, 1000));
    else if (IS("severe"))
        put_phrase(g, b, zh ? c->dom->severe_zh : c->dom->severe_en);
    else if (IS("impact"))
        put_phrase(g, b, zh ? c->dom->impact_zh : c->dom->impact_en);
    else if (IS("host"))
        putf(b, "%s", hosts[below(g, (int)(sizeof hosts / sizeof *hosts))]);
    else if (IS("tag"))
        put_tag(g, b, c);
    else if (IS("ts"))
        put_ts(g, b);
    else if (IS("time"))
        putf(b, "%02d:%02d", below(g, 24), below(g, 60));
    else if (IS("n"))
        putf(b, "%d", 3 + below(g, 12));
    else if (IS("n2"))
        putf(b, "%d", 1 + below(g, 6));
    else if (IS("h"))
        putf(b, "%d", (int[]){2, 4, 6, 8, 12, 24, 48}[below(g, 7)]);
    else if (IS("d"))
        putf(b, "%d", 5 + below(g, 85));
    else if (IS("m"))
        putf(b, "%d", 2 + below(g, 28));
    else if (IS("s"))
        putf(b, "%d", 1 + below(g, 59));
    else if (IS("pct"))
        putf(b, "%d", 5 + below(g, 90));
    else if (IS("hours"))
        putf(b, "%d", 2000 + below(g, 60000));
    else if (IS("num"))
        putf(b, "%d", 10000 + below(g, 90000));
#undef IS
}

static void expand(Gen *g, Buf *b, const Ctx *c, const char *frame) {
    for (const char *p = frame; *p;) {
        const char *open = strchr(p, '{');
        if (!open) {
            puts_(b, p);
            return;
        }
        put(b, p, (size_t)(open - p));
        const char *close = strchr(open, '}');
        put_key(g, b, c, open + 1, (size_t)(close - open - 1));
        p = close + 1;
    }
}

/* --- noise --- */

/* What monitoring systems put before the message. */
static void put_prefix(Gen *g, Buf *b) {
    switch (below(g, 9)) {
    case 0: puts_(b, "["), put_ts(g, b), puts_(b, "] "); break;
    case 1: put_ts(g, b), puts_(b, " "); break;
    case 2: putf(b, "<%d>%s ", 128 + below(g, 8), hosts[below(g, 10)]); break;
    case 3: putf(b, "ALM#%d ", 10000 + below(g, 90000)); break;
    case 4: putf(b, "sev=%s ", severities[below(g, 10)]); break;
    case 5: putf(b, "[%s] ", severities[below(g, 10)]); break;
    case 6: putf(b, "P%d | ", 1 + below(g, 4)); break;
    case 7: putf(b, "%s: ", hosts[below(g, 10)]); break;
    default: putf(b, "EVT 0x%04X ", below(g, 65536)); break;
    }
}

static void put_suffix(Gen *g, Buf *b, const Ctx *c) {
    switch (below(g, 7)) {
    case 0: puts_(b, " (ack=N)"); break;
    case 1: putf(b, " ref INC%07d", below(g, 10000000)); break;
    case 2: puts_(b, " tag "), put_tag(g, b, c); break;
    case 3: puts_(b, " [auto]"); break;
    case 4: putf(b, " src=10.%d.%d.%d", below(g, 256), below(g, 256), 1 + below(g, 254)); break;
    case 5:
        putf(b, " id=%08x-%04x-4%03x-a%03x-%012llx", (unsigned)rng_next(&g->rng), below(g, 65536),
             below(g, 4096), below(g, 4096),
             (unsigned long long)(rng_next(&g->rng) & 0xFFFFFFFFFFFFull));
        break;
    default: putf(b, " #%d", below(g, 100000)); break;
    }
}

/* A typo in an ASCII word of four letters or more: swap, drop or double a letter. */
static void typos(Gen *g, Buf *b) {
    char out[TEXT_MAX];
    size_t o = 0;
    for (size_t i = 0; i < b->n && o + 2 < TEXT_MAX;) {
        size_t j = i;
        while (j < b->n && ((b->s[j] | 32) >= 'a' && (b->s[j] | 32) <= 'z')) j++;
        if (j - i >= 4 && uniform(g) < 0.025) {
            size_t k = i + 1 + (size_t)below(g, (int)(j - i - 2));
            int kind = below(g, 3);
            for (size_t q = i; q < j && o + 2 < TEXT_MAX; q++) {
                if (q == k && kind == 0 && q + 1 < j) {
                    out[o++] = b->s[q + 1], out[o++] = b->s[q], q++;
                } else if (q == k && kind == 1) {
                    continue;
                } else {
                    out[o++] = b->s[q];
                    if (q == k && kind == 2) out[o++] = b->s[q];
                }
            }
            i = j;
        } else {
            size_t end = j > i ? j : i + 1;
            for (; i < end && o + 1 < TEXT_MAX; i++) out[o++] = b->s[i];
        }
    }
    memcpy(b->s, out, o);
    b->n = o;
    b->s[o] = '\0';
}

static void upper_ascii(Buf *b) {
    for (size_t i = 0; i < b->n; i++)
        if (b->s[i] >= 'a' && b->s[i] <= 'z') b->s[i] = (char)(b->s[i] - 32);
}

/* --- texts --- */

static void choose_context(Gen *g, Ctx *c) {
    c->dom = &domains[below(g, (int)N_DOMAINS)];
    int ne = 0;
    while (ne < 6 && c->dom->equip[ne].en) ne++;
    c->eq = &c->dom->equip[below(g, ne)];
    c->fault = &c->eq->faults[below(g, 4)];
    c->fault2 = &c->dom->equip[below(g, ne)].faults[below(g, 4)];
    c->fault3 = &c->dom->equip[below(g, ne)].faults[below(g, 4)];
    for (int i = 0; i < 3; i++) c->idn[i] = 1 + below(g, 40);
    pick_format(g, c);
}

static int count_parts(const char *const *parts) {
    int n = 0;
    while (n < MAX_PARTS && parts[n]) n++;
    return n;
}

/* A head and a cue of the label whose pair belongs to the split. */
static void choose_parts(Gen *g, const Label *l, bool zh, const char **head, const char **cue) {
    const char *const *heads = zh ? l->head_zh : l->head_en, *const *cues =
                                                                 zh ? l->cue_zh : l->cue_en;
    int nh = count_parts(heads), nc = count_parts(cues), i, j;

    do {
        i = below(g, nh), j = below(g, nc);
    } while (((i + j) % 4 == 3) != g->test);
    *head = heads[i], *cue = cues[j];
}

/* Head and cue in either order, joined as consoles and people join them. */
static void compose(Gen *g, Buf *b, const Ctx *c, const Label *l) {
    static const char *const sep_en[] = {", ", " - ", ". ", "; ", " ", ": "};
    static const char *const sep_zh[] = {"，", "。", "；", " ", "，"};
    const char *head, *cue;

    choose_parts(g, l, c->zh, &head, &cue);
    if (!*cue) {
        expand(g, b, c, head);
        return;
    }
    /* A bare question mark ends the head; a cue ending in a colon or question mark
     * needs only a space (or nothing, in Chinese) when it comes first. */
    const char *sep = c->zh ? sep_zh[below(g, 5)] : sep_en[below(g, 6)];
    bool mark = !strcmp(cue, "?") || !strcmp(cue, "？");
    bool first = !mark && uniform(g) < l->cue_first;
    size_t n = strlen(cue);
    bool punct = cue[n - 1] == ':' || cue[n - 1] == '?' ||
                 (n >= 3 && (!strcmp(cue + n - 3, "：") || !strcmp(cue + n - 3, "？")));
    if (mark)
        sep = "";
    else if (first && punct)
        sep = c->zh ? "" : " ";
    expand(g, b, c, first ? cue : head);
    puts_(b, sep);
    expand(g, b, c, first ? head : cue);
}

static void make_text(Gen *g, Buf *b, int label, double zh_share) {
    Ctx c;
    c.zh = uniform(g) < zh_share;
    choose_context(g, &c);
    b->n = 0, b->s[0] = '\0';

    if (uniform(g) < 0.3) put_prefix(g, b);
    compose(g, b, &c, &labels[label]);
    if (uniform(g) < 0.2) put_suffix(g, b, &c);
    if (!c.zh && uniform(g) < 0.07) upper_ascii(b);
    typos(g, b);
}

/* --- JSON output --- */

static void put_json_string(FILE *f, const char *s) {
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\')
            fprintf(f, "\\%c", *p);
        else if (*p < 0x20)
            fprintf(f, "\\u%04x", *p);
        else
            fputc(*p, f);
    }
    fputc('"', f);
}

static void usage(void) {
    fprintf(stderr, "usage: gen_alarms [--seed N] [--count N] [--split train|test] "
                    "[--zh FRACTION] [-o FILE]\n");
    exit(64);
}

int main(int argc, char **argv) {
    unsigned long long seed = 1;
    long count = 10000;
    double zh = 0.4;
    bool test = false;
    const char *out = NULL;

    for (int i = 1; i < argc; i++) {
        if (i + 1 >= argc) usage();
        const char *o = argv[i], *v = argv[++i];
        if (!strcmp(o, "--seed"))
            seed = strtoull(v, NULL, 0);
        else if (!strcmp(o, "--count"))
            count = strtol(v, NULL, 0);
        else if (!strcmp(o, "--zh"))
            zh = strtod(v, NULL);
        else if (!strcmp(o, "--split") && (!strcmp(v, "train") || !strcmp(v, "test")))
            test = !strcmp(v, "test");
        else if (!strcmp(o, "-o"))
            out = v;
        else
            usage();
    }
    if (count < 0 || zh < 0 || zh > 1) usage();

    FILE *f = out ? fopen(out, "w") : stdout;
    if (!f) return perror(out), 1;
    Gen g = {.test = test};
    /* The splits draw from different streams, so that the test split is not a prefix of
     * the training one under the same seed. */
    rng_seed(&g.rng, seed * 2 + (test ? 1 : 0));
    Buf b;
    for (long i = 0; i < count; i++) {
        int label = below(&g, (int)N_LABELS);
        make_text(&g, &b, label, zh);
        fputs("{\"text\": ", f);
        put_json_string(f, b.s);
        fprintf(f, ", \"label\": \"%s\"}\n", labels[label].name);
    }
    if (out && fclose(f) != 0) return perror(out), 1;
    return 0;
}
